"""The gRPC service: GmmService, health, reflection, startup and shutdown.

``serve(host, port, data_dir)`` runs the server until SIGTERM or SIGINT.
:class:`BackgroundServer` runs one in a thread, for tests and notebooks.
"""

from gmmserve.service._server import (
    SERVICE_NAME,
    BackgroundServer,
    GmmServer,
    serve,
    serve_settings,
)
from gmmserve.service._settings import ServerSettings

__all__ = [
    "SERVICE_NAME",
    "BackgroundServer",
    "GmmServer",
    "ServerSettings",
    "serve",
    "serve_settings",
]
