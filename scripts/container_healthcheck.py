"""Check a gmmserve server through the standard gRPC health service.

Usage: python container_healthcheck.py [--host HOST] [--port PORT]
       [--service NAME] [--timeout SECONDS]

The container image runs this as its HEALTHCHECK, because the image has
neither curl nor grpc_health_probe. Exit status 0 means the server reported
SERVING, 1 any other status or a failed call. The host and port default to
the GMMSERVE_HOST and GMMSERVE_PORT variables the server is started with.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

DEFAULT_PORT = 50051
# A server bound to every interface is reached through loopback.
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line, taking defaults from the environment.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    argparse.Namespace
        ``host``, ``port``, ``service`` and ``timeout``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("GMMSERVE_HOST", "127.0.0.1"),
        help="server address (default: $GMMSERVE_HOST or 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        # argparse converts a string default with ``type``, so an invalid
        # GMMSERVE_PORT is reported as an invalid --port value.
        default=os.environ.get("GMMSERVE_PORT", str(DEFAULT_PORT)),
        help=f"server port (default: $GMMSERVE_PORT or {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--service",
        default="",
        help="service name to check (default: empty, which checks the whole server)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="deadline of the health call in seconds (default: 3)",
    )
    options = parser.parse_args(argv)
    if not 1 <= options.port <= 65535:
        parser.error(f"--port must be in [1, 65535], got {options.port}")
    if not options.timeout > 0:
        parser.error(f"--timeout must be above 0 seconds, got {options.timeout}")
    return options


def target_address(host: str, port: int) -> str:
    """Return the gRPC target for a server listening on ``host:port``."""
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def check(target: str, service: str, timeout: float) -> int:
    """Call Health.Check once and return the process exit status.

    Parameters
    ----------
    target : str
        The gRPC target, such as ``"127.0.0.1:50051"``.
    service : str
        The service name to check; empty for the whole server.
    timeout : float
        Deadline of the call in seconds.

    Returns
    -------
    int
        0 when the status is SERVING, otherwise 1.
    """
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = stub.Check(request, timeout=timeout)
        except grpc.RpcError as error:
            print(
                f"health check of {target} failed: {error.code().name} "
                f"{error.details()}",
                file=sys.stderr,
            )
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{target} is {status}, expected SERVING", file=sys.stderr)
        return 1
    print(f"{target} is {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the health check and return its exit status."""
    options = parse_arguments(argv)
    target = target_address(options.host, options.port)
    return check(target, options.service, options.timeout)


if __name__ == "__main__":
    sys.exit(main())
