"""The data plane's two FastAPI apps: the client API and the management listener.

Both share one :class:`~data_plane.runtime.Runtime`. ``create_app()`` builds the client
API; given no runtime it builds one from the settings and runs it in its lifespan (handy
for a single-listener test), while ``data_plane.server`` builds the runtime itself and
hands it to both apps.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from data_plane.api import knowledge_bases, management
from data_plane.api.routes import (
    attestation,
    embeddings,
    health,
    openai,
    receipts,
    sessions,
    usage,
)
from data_plane.errors import ApiError, PayloadTooLarge, TooManyRequests
from data_plane.fair_queue import QueueFull
from data_plane.rate_limits import RateLimited
from data_plane.runtime import Runtime
from data_plane.services.inference import InferenceService
from data_plane.services.knowledge_bases import KnowledgeBaseService
from data_plane.services.retrieval import RetrievalService
from data_plane.settings import Settings

logger = logging.getLogger("data_plane.access")
_VALIDATOR = re.compile(r"function-after\[\w+\(\), (\w+)\]")


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None):
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
    )


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 in OpenAI's shape for a body over the limit, whether declared or streamed.

    A streamed body is cut off when it passes the limit; whatever the app answers to the
    cut-off body is dropped and the 413 sent instead (FastAPI's own limit answers in
    plain text, which OpenAI clients can't parse).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0
        exceeded = started = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not started:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)


class AccessLog:
    """One log line and one metric per request, when its response starts: method, route
    template, status and time. Also adds the client's rate-limit state to every answer
    (OpenAI sends it with each one; its SDK reads it).

    Plain ASGI: a streamed answer's chunks pass straight through (a ``BaseHTTPMiddleware``
    would move each one through a memory stream and a task switch: per token, on the
    event loop that shares the cores with llama.cpp).
    """

    def __init__(self, app: ASGIApp, listener: str) -> None:
        self.app = app
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        logged = False

        def log(status: int) -> None:
            nonlocal logged
            logged = True
            # The route template: no ids, no query string (an unmatched path is "-").
            route = getattr(scope.get("route"), "path", None)
            seconds = time.monotonic() - started
            logger.info("%s %s %d %.1fms", scope["method"], route or "-", status, seconds * 1000)
            scope["app"].state.runtime.metrics.request(self.listener, route, status, seconds)

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                limited = scope.get("state", {}).get("rate_limited")
                if limited is not None:
                    # (A rate-limit refusal already carries the state it was refused at.)
                    headers = MutableHeaders(scope=message)
                    for name, value in limited().items():
                        headers.setdefault(name, value)
                log(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            if not logged:
                log(500)  # the server's error handler answers 500
            raise


def _install_common(app: FastAPI, max_body_bytes: int, listener: str) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    # Domain errors of the components that any route may meet: mapped here, once.
    @app.exception_handler(RateLimited)
    async def rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        err = TooManyRequests(exc.message, code=exc.code, headers=exc.headers)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        code = "too_many_requests_queued" if exc.client_limit else "node_busy"
        err = TooManyRequests(str(exc), code=code, retry_after=1)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(
                400, "request body is not valid JSON", "invalid_request_error", "invalid_json"
            )

        # Name the fields and what is wrong; never echo the input (it may be content),
        # not even the name of a field the API does not have.
        def where(e: Any) -> str:
            # (A union's branch of our checked strings shows as "function-after[...]".)
            loc = [_VALIDATOR.sub(r"\1", str(p)) for p in e.get("loc", ()) if p != "body"]
            if e.get("type") == "extra_forbidden" and loc:
                loc[-1] = "(unknown field)"
            return ".".join(loc)

        parts = [f"{where(e) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:5]]
        param = (where(errors[0]) if errors else "") or None
        return _error(422, "; ".join(parts), "invalid_request_error", "invalid_parameter", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body its JSON parser gave up on (nested past
            # Python's recursion limit, say); its own message names no reason.
            return _error(
                400,
                "request body could not be parsed as JSON (nested too deeply?)",
                "invalid_request_error",
                "invalid_json",
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message, "invalid_request_error", code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)  # the formatter withholds the message
        return _error(500, "internal error", "server_error", "internal_error")

    app.add_middleware(AccessLog, listener=listener)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)  # outermost


def _lifespan(runtime: Runtime, owned: bool) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if owned:
            await runtime.start()
        try:
            yield
        finally:
            if owned:
                await runtime.stop()

    return lifespan


# What each listener serves (the fuzz tests read their OpenAPI documents from these).
CLIENT_ROUTERS = (
    openai.router,
    embeddings.router,
    sessions.router,
    receipts.router,
    usage.router,
    attestation.router,
    health.router,
)
MANAGEMENT_ROUTERS = (management.router, knowledge_bases.router)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The client API (OpenAI-compatible routes and sessions)."""
    owned = runtime is None
    if runtime is None:
        runtime = Runtime(settings or Settings())
    app = FastAPI(
        title="Sanctum data plane",
        version="1",
        lifespan=_lifespan(runtime, owned),
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.inference = InferenceService(runtime)
    app.state.retrieval = RetrievalService(runtime)
    app.state.inference.context_assemblers.append(app.state.retrieval.assemble)
    for router in CLIENT_ROUTERS:
        app.include_router(router)
    _install_common(app, runtime.settings.max_body_bytes, "api")
    return app


def create_management_app(runtime: Runtime) -> FastAPI:
    """The management listener on the management address: signed config, usage records,
    health, and knowledge-base loading (signed by the control plane's key)."""
    app = FastAPI(
        title="Sanctum data plane (management)",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime
    app.state.retrieval = RetrievalService(runtime)
    app.state.knowledge_bases = KnowledgeBaseService(runtime)
    for router in MANAGEMENT_ROUTERS:
        app.include_router(router)
    _install_common(app, runtime.settings.max_management_body_bytes, "management")
    return app
