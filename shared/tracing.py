"""OpenTelemetry tracing, off unless an OTLP endpoint is configured; written once.

Each process (node, gateway agent, control plane, Celery worker) calls :func:`configure`
with its ``*_TRACING__*`` settings. With no endpoint it returns ``None`` and does
nothing: no tracer provider is set, the planes install no instrumentation, and the only
spans our own code opens are the API's no-op ones. With an endpoint it sets a
:class:`TracerProvider` that batches spans to an OTLP/HTTP collector.

Spans carry ids, counts, durations, route templates and status codes, never client
content. The instrumentations (FastAPI/ASGI, Django, Celery, httpx) record more than
that by default: the path and the query string (``url.full``, ``http.target``), the
user agent, header values when asked, exception messages (``str(exc)`` of an error that
may echo a prompt). So every span passes :class:`ContentFreeExporter` on its way out:
an allow-list of attribute names, span names kept only when they are a method and a
route template (or one of ours), status descriptions dropped, exception events reduced
to the exception's type. What is not on the list is not exported; a new instrumentation
attribute stays home until someone decides it is not content and lists it here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, Status
from pydantic import BaseModel, Field

TRACES_PATH = "/v1/traces"

# Attribute names that hold no content: methods, route templates, status codes,
# protocol versions, Celery's task names and ids, and ours (``sanctum.*``: ids and
# counts only, see each span's code). Not the host or port: the client names them in
# its Host header.
ALLOWED_ATTRIBUTES = frozenset(
    {
        "http.method",
        "http.request.method",
        "http.route",
        "http.status_code",
        "http.response.status_code",
        "http.scheme",
        "url.scheme",
        "http.flavor",
        "network.protocol.version",
        "error.type",
        "celery.action",
        "celery.state",
        "celery.task_name",
        "messaging.message.id",
        "messaging.system",
        "messaging.operation",
    }
)
ALLOWED_PREFIXES = ("sanctum.",)
# Span names kept as they are besides "METHOD" and "METHOD <http.route>": Celery's
# "run/<task>" and "apply_async/<task>" (task names are the code's), and ours.
_NAMED_BY_CODE = re.compile(r"(?:run|apply_async)/[A-Za-z0-9_.]+|sanctum\.[a-z_.]+")
_METHOD = re.compile(r"[A-Z]{1,16}")


class TracingSettings(BaseModel):
    """``PREFIX_TRACING__*``: where spans go. Unset endpoint: no tracing at all."""

    otlp_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="the OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (spans are "
        "POSTed to its /v1/traces); unset: tracing off",
    )
    service_name: str | None = Field(
        default=None, max_length=100, description="service.name (default: the process's role)"
    )
    sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="share of traces kept (parent's choice wins)"
    )


def _attributes(attrs: object) -> dict[str, object]:
    if not attrs:
        return {}
    return {
        k: v
        for k, v in dict(attrs).items()  # type: ignore[call-overload]
        if k in ALLOWED_ATTRIBUTES or k.startswith(ALLOWED_PREFIXES)
    }


def _span_name(span: ReadableSpan) -> str:
    # The instrumentations name a server span "METHOD <route template>" when a route
    # matched and "METHOD" otherwise; the route template is also its http.route. Any
    # other name (a path, a name a client chose) is replaced.
    name = span.name
    attrs = span.attributes or {}
    method = attrs.get("http.request.method") or attrs.get("http.method")
    route = attrs.get("http.route")
    if _METHOD.fullmatch(name) or _NAMED_BY_CODE.fullmatch(name):
        return name
    if isinstance(method, str) and isinstance(route, str):
        return f"{method} {route}"
    return method if isinstance(method, str) and _METHOD.fullmatch(method) else "span"


def _events(span: ReadableSpan) -> list[Event]:
    # Exception events hold the message and the traceback (whose last line repeats it):
    # only the exception's type goes out. Other events are dropped.
    kept = []
    for event in span.events:
        if event.name == "exception":
            etype = (event.attributes or {}).get("exception.type")
            attrs = {"exception.type": etype} if isinstance(etype, str) else {}
            kept.append(Event("exception", attrs, event.timestamp))
    return kept


def _without_state(context: SpanContext | None) -> SpanContext | None:
    # The trace state is vendors' free text, and a caller may send one: not exported.
    if context is None:
        return None
    return SpanContext(context.trace_id, context.span_id, context.is_remote, context.trace_flags)


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """``span`` with only what may leave the process: see the module docstring."""
    return ReadableSpan(
        name=_span_name(span),
        context=_without_state(span.context),
        parent=_without_state(span.parent),
        resource=span.resource,
        attributes=_attributes(span.attributes),  # type: ignore[arg-type]
        events=_events(span),
        links=(),
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ContentFreeExporter(SpanExporter):
    """Passes each span through :func:`scrubbed` to the exporter it wraps."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([scrubbed(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def traces_url(endpoint: str) -> str:
    """The collector's ``/v1/traces`` URL (an endpoint that names it already is kept)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def provider_for(settings: TracingSettings, service: str) -> TracerProvider:
    """A tracer provider that batches scrubbed spans to the settings' collector."""
    assert settings.otlp_endpoint is not None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name or service}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint), timeout=10)
    provider.add_span_processor(BatchSpanProcessor(ContentFreeExporter(exporter)))
    return provider


def configure(settings: TracingSettings, service: str) -> TracerProvider | None:
    """Set the process's tracer provider when ``settings`` name an endpoint; else None.

    ``service`` is the role (``sanctum-node``, ``sanctum-control-plane``, ...), used as
    ``service.name`` unless the settings name one.
    """
    if settings.otlp_endpoint is None:
        return None
    provider = provider_for(settings, service)
    trace.set_tracer_provider(provider)
    return provider


def enabled() -> bool:
    """Whether this process set a tracer provider (our own spans skip work when not)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)
