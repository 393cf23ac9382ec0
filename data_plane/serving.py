"""uvicorn servers for processes that run more than one listener (a node: client API,
management, metrics; a gateway agent: management, metrics).

uvicorn's server installs its own SIGINT/SIGTERM handlers and re-raises the signal once
it stopped; with two servers in one process each would take the signal for itself. These
leave signals to the process, which stops every server itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(app: Any, host: str, port: int, **options: Any) -> Server:
    """A server for ``app``: no lifespan (the process owns what the app uses), no access
    log or server header, uvicorn's logging left to ours."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        **options,
    )
    return Server(config)


def bound_port(server: uvicorn.Server) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])
