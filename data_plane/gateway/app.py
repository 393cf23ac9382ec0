"""The gateway agent's management listener: signed config in, signed health out.

Bound to the management address only. Every route takes only a request signed by a
management key the gateway trusts and meant for this gateway
(``shared.signed_request``); the config is, besides, signed by a config key. Health is
answered as a JWS signed by the gateway's key, bound to the request's one-time id.
Errors come in the same shape as the data plane's management listener. This app
imports nothing of the inference stack: a gateway has no model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from data_plane.config_store import ConfigRejected
from data_plane.gateway.agent import GatewayAgent
from data_plane.request_target import request_target
from shared import management
from shared.signed_request import SignedRequestError, sign_answer

logger = logging.getLogger("data_plane.gateway.access")


def _error(status: int, message: str, code: str | None, type_: str = "invalid_request_error"):
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
    )


def _rejected(exc: ConfigRejected) -> JSONResponse:
    type_ = "server_error" if exc.status >= 500 else "invalid_request_error"
    body = {
        "error": {"message": exc.message, "type": type_, "param": None, "code": exc.code},
        **exc.extra,
    }
    return JSONResponse(body, status_code=exc.status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it passes ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _signed(request: Request, body: bytes) -> dict[str, Any] | JSONResponse:
    """The request's claims, or the 401 to answer when it is not a signed request for us."""
    agent: GatewayAgent = request.app.state.agent
    try:
        return agent.requests.verify(
            request.headers.get("authorization"),
            request.method,
            request_target(request),
            body,
        )
    except SignedRequestError as exc:
        return _error(401, str(exc), "invalid_signature", "authentication_error")


def create_app(agent: GatewayAgent) -> FastAPI:
    app = FastAPI(
        title="Sanctum gateway agent",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.agent = agent
    limit = agent.settings.max_config_bytes

    @app.put(management.CONFIG_PATH, response_model=None)
    async def put_config(request: Request) -> dict[str, Any] | JSONResponse:
        """Apply a signed gateway config (``application/jose``: the compact JWS)."""
        body = await _read_body(request, limit)
        if body is None:
            return _error(413, f"config exceeds {limit} bytes", "payload_too_large")
        claims = _signed(request, body)
        if isinstance(claims, JSONResponse):
            return claims
        try:
            token = body.decode("ascii").strip()
        except UnicodeDecodeError:
            token = ""
        if not token:
            return _error(400, "body must be a compact JWS", management.INVALID_CONFIG)
        try:
            config = await agent.apply(token)
        except ConfigRejected as exc:
            logger.warning("gateway config refused code=%s status=%d", exc.code, exc.status)
            return _rejected(exc)
        return {
            "version": config.version,
            "applied": True,
            "peers": len(config.enabled_peers()),
        }

    @app.get(management.HEALTH_PATH, response_model=None)
    async def health(request: Request) -> Response:
        """Config version, interface and per-peer latest handshake, signed for the caller."""
        claims = _signed(request, b"")
        if isinstance(claims, JSONResponse):
            return claims
        token = sign_answer(
            await agent.health(),
            agent.signing_key,
            nonce=claims["jti"],
            audience=management.CONTROL_PLANE_AUDIENCE,
        )
        return Response(token, media_type=management.JOSE)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message, code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)  # the formatter withholds the message
        return _error(500, "internal error", "internal_error", "server_error")

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        started = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        logger.info(
            "%s %s %d %.1fms",
            request.method,
            getattr(route, "path", "-"),
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    return app
