"""Run the server: ``python -m gmmserve.service --port 0 --data-dir DIR``.

It takes the flags of ``gmmserve serve``. With ``--port-file``, the bound
port is written to that file once the server accepts RPCs, which lets a
parent process find a port-0 server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gmmserve.service._arguments import add_server_arguments, settings_from_arguments
from gmmserve.service._server import serve_settings
from gmmserve.state import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m gmmserve.service", description=__doc__
    )
    add_server_arguments(parser)
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from_arguments(options)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def report_port(port: int) -> None:
        if options.port_file:
            atomic_write_json(options.port_file, {"port": port})

    asyncio.run(serve_settings(settings, on_started=report_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
