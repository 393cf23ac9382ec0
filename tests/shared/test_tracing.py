"""shared.tracing's allow-list, through the real FastAPI instrumentation and exporter.

An instrumented FastAPI app, served as the client listener is, answers requests that
carry a canary in the path, the query string, headers (a trace state among them), and
an exception message; its spans go by OTLP/HTTP to the test's
receiver. Exported through the allow-list the canary is nowhere; the same spans exported
without it do hold it (so the check can fail, and the allow-list is what removes it).
"""

from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from data_plane.tracing import instrument
from shared import tracing
from shared.tracing import ContentFreeExporter, TracingSettings, configure, traces_url
from tests.canary import new_marker, texts_containing
from tests.otlp import OtlpReceiver, attributes


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/knowledge-bases/{name}")
    async def knowledge_base(name: str) -> dict[str, str]:
        return {"name": "withheld"}

    @app.get("/v1/echo")
    async def echo(q: str) -> None:
        raise RuntimeError(f"cannot answer {q}")  # an error that echoes its input

    return app


CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _export(receiver: OtlpReceiver, marker: str, scrub: bool) -> None:
    exporter = OTLPSpanExporter(endpoint=traces_url(receiver.endpoint))
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ContentFreeExporter(exporter) if scrub else exporter)
    )
    served = instrument(_app(), provider, client_facing=scrub)
    headers = {
        "Authorization": f"Bearer {marker}",
        "User-Agent": marker,
        "Host": marker,
        # A client's own trace context: its trace id and a trace state holding content.
        "traceparent": f"00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01",
        "tracestate": f"vendor={marker}",
        "baggage": f"k={marker}",
    }
    with TestClient(served, raise_server_exceptions=False, headers=headers) as client:
        assert client.get(f"/v1/knowledge-bases/{marker}?q={marker}").status_code == 200
        assert client.get(f"/{marker}/{marker}?{marker}=1").status_code == 404
        assert client.get("/v1/echo", params={"q": marker}).status_code == 500
    provider.shutdown()


def test_exported_spans_keep_route_and_status_and_lose_every_trace_of_content():
    marker = new_marker()
    with OtlpReceiver() as receiver:
        _export(receiver, marker, scrub=True)
        spans = [span for _, span in receiver.spans()]
        assert texts_containing(marker, receiver.texts()) == []
    assert {s.trace_id.hex() for s in spans}.isdisjoint({CLIENT_TRACE_ID})
    names = sorted(s.name for s in spans)
    assert names == ["GET", "GET /v1/echo", "GET /v1/knowledge-bases/{name}"]
    kb = next(s for s in spans if s.name == "GET /v1/knowledge-bases/{name}")
    assert attributes(kb)["http.route"] == "/v1/knowledge-bases/{name}"
    assert attributes(kb)["http.status_code"] == 200
    failed = next(s for s in spans if s.name == "GET /v1/echo")
    assert attributes(failed)["http.status_code"] == 500
    assert failed.status.message == ""
    for event in failed.events:
        assert {a.key for a in event.attributes} <= {"exception.type"}


def test_the_same_spans_unscrubbed_would_carry_the_canary():
    marker = new_marker()
    with OtlpReceiver() as receiver:
        _export(receiver, marker, scrub=False)
        assert texts_containing(marker, receiver.texts()) != []
        assert CLIENT_TRACE_ID in {s.trace_id.hex() for _, s in receiver.spans()}


def test_no_endpoint_means_no_provider_and_no_exporter_thread():
    assert configure(TracingSettings(), "sanctum-test") is None
    assert not tracing.enabled()
    assert not [t for t in threading.enumerate() if t.name.startswith("OtelBatch")]


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://c.example/v1/traces", "https://c.example/v1/traces"),
    ],
)
def test_the_endpoint_names_the_collector_or_its_traces_path(endpoint: str, url: str):
    assert traces_url(endpoint) == url
