"""The Prometheus scrape endpoint that nodes and gateway agents serve, written once.

Metrics are content-free by construction: names, counts, durations, ids the operator
chose (model names and hashes, node and pool names, and client ids only where per-client
series are turned on); never a prompt, an answer, a document or a key. They are served
on a listener of their own on the management address (``/metrics``), not on the
management listener itself: that one admits the control plane's certificate only, and
Prometheus is not the control plane. Every scrape needs the bearer token whose file the
settings name (Prometheus: ``authorization: {credentials_file: ...}``); without a token
file configured, the listener does not start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.asgi import make_asgi_app
from pydantic import BaseModel, Field

METRICS_PATH = "/metrics"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsSettings(BaseModel):
    """``PREFIX_METRICS__*``: where the scrape endpoint listens, and its token."""

    host: str = Field(default="127.0.0.1", description="an address on the management link")
    port: int = Field(default=9108, ge=0, le=65535)
    token_file: Path | None = Field(
        default=None,
        description="file holding the scrapers' bearer token (0600 or 0400); unset: no "
        "metrics listener",
    )


class MetricsTokenError(ValueError):
    """The token file is missing, empty, too short, or readable by others."""


def read_token(path: Path) -> bytes:
    """The token in ``path``, refused if its mode lets group or others read it."""
    try:
        mode = os.stat(path).st_mode
        token = path.read_bytes().strip()
    except OSError as exc:
        raise MetricsTokenError(f"metrics token file {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise MetricsTokenError(
            f"metrics token file {path} is mode {stat.S_IMODE(mode):o}: make it 0600"
        )
    if len(token) < 24:
        raise MetricsTokenError(f"metrics token file {path}: the token needs 24+ characters")
    return token


def scrape_app(registry: CollectorRegistry, token: bytes) -> Callable[..., Awaitable[None]]:
    """An ASGI app answering ``GET /metrics`` with ``registry``'s exposition to a request
    carrying ``Authorization: Bearer <token>``; 401 without it, 404 elsewhere."""
    expected = hashlib.sha256(token).digest()
    metrics = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"] != METRICS_PATH or scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 404, b"not found\n")
            return
        presented = b""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if not hmac.compare_digest(hashlib.sha256(presented).digest(), expected):
            await _answer(send, 401, b"a bearer token is required\n", bearer=True)
            return
        await metrics(scope, receive, send)

    return app


async def _answer(send: Send, status: int, body: bytes, *, bearer: bool = False) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="metrics"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
