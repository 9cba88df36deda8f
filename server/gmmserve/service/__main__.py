"""Run the server: ``python -m gmmserve.service --port 0 --data-dir DIR``.

With ``--port-file``, the bound port is written to that file once the
server accepts RPCs, which lets a parent process find a port-0 server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from gmmserve.service._server import serve_settings
from gmmserve.service._settings import ServerSettings
from gmmserve.state import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gmmserve.service", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--port", type=int, default=50051, help="TCP port; 0 picks a free one"
    )
    parser.add_argument(
        "--data-dir", default=".gmmserve-data", help="session store directory"
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds open RPCs get on shutdown"
    )
    parser.add_argument("--port-file", help='JSON file that receives {"port": N}')
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ServerSettings(
        host=options.host,
        port=options.port,
        data_dir=Path(options.data_dir),
        grace_s=options.grace,
    )

    def report_port(port: int) -> None:
        if options.port_file:
            atomic_write_json(options.port_file, {"port": port})

    asyncio.run(serve_settings(settings, on_started=report_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
