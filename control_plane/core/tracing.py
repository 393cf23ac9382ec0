"""Tracing the control plane: Django's requests, Celery's tasks, calls to nodes (httpx).

Started from the core app's ``ready()`` in every process that sets Django up (gunicorn's
workers, Celery's worker and beat, management commands), before Django builds its
middleware chain. With ``SANCTUM_CP_TRACING__OTLP_ENDPOINT`` unset it does nothing:
no provider, no instrumentation. What the spans may hold, and the allow-list every span
passes before it leaves the process, are in ``shared.tracing``.
"""

from __future__ import annotations

from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from control_plane.environment import ControlPlaneSettings
from shared.tracing import configure


def start(settings: ControlPlaneSettings) -> bool:
    """Install the instrumentations when tracing is configured; whether it is."""
    provider = configure(settings.tracing, "sanctum-control-plane")
    if provider is None:
        return False
    # Django's spans are named by the route (``GET ^api/clients/(?P<pk>...)``) when
    # one matched, by the method otherwise; no header is captured.
    DjangoInstrumentor().instrument(
        tracer_provider=provider,
        http_capture_headers_server_request=[],
        http_capture_headers_server_response=[],
    )
    CeleryInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return True
