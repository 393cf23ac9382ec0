"""Tracing the node's and the gateway agent's FastAPI apps (shared.tracing holds the rest).

Called only when :func:`shared.tracing.configure` set a provider: with tracing off no
instrumentation is installed at all. The ASGI instrumentation's inner spans (one per
``receive`` and per ``send``: one per streamed chunk of an answer) are left out; the
server span is named by the route template, and what else it records passes
``shared.tracing``'s allow-list on the way out (no path, no query, no headers).
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider


def instrument(app: FastAPI, provider: TracerProvider) -> None:
    """Trace ``app``'s requests: one server span each, named ``METHOD /route/{template}``."""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        exclude_spans=["receive", "send"],
        # No header is captured, whatever OTEL_INSTRUMENTATION_HTTP_CAPTURE_* says.
        http_capture_headers_server_request=[],
        http_capture_headers_server_response=[],
    )
