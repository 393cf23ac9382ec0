"""Tracing the node's and the gateway agent's FastAPI apps (shared.tracing holds the rest).

Called only when :func:`shared.tracing.configure` set a provider: with tracing off no
instrumentation is installed at all. The ASGI instrumentation's inner spans (one per
``receive`` and per ``send``: one per streamed chunk of an answer) are left out; the
server span is named by the route template, and what else it records passes
``shared.tracing``'s allow-list on the way out (no path, no query, no headers).

A client's own trace context is not continued: on the client listener the
``traceparent``, ``tracestate`` and ``baggage`` headers are dropped before the
instrumentation reads them, since a trace id or a trace state the client chose would
otherwise be exported as it sent it. The management listener keeps them: there the
caller is the control plane, whose traces a node's spans continue.
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from starlette.types import ASGIApp, Receive, Scope, Send

TRACE_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


class WithoutTraceContext:
    """Drops the W3C trace-context and baggage headers of every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k not in TRACE_CONTEXT_HEADERS]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def instrument(app: FastAPI, provider: TracerProvider, *, client_facing: bool) -> ASGIApp:
    """Trace ``app``'s requests (one server span each, ``METHOD /route/{template}``);
    the ASGI app to serve in its place."""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        exclude_spans=["receive", "send"],
        # No header is captured, whatever OTEL_INSTRUMENTATION_HTTP_CAPTURE_* says.
        http_capture_headers_server_request=[],
        http_capture_headers_server_response=[],
    )
    return WithoutTraceContext(app) if client_facing else app
