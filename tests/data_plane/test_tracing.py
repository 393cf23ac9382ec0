"""Tracing on a real node: spans reach an OTLP/HTTP collector and hold no content.

The node exports with the real OpenTelemetry SDK and instrumentation to a receiver in
the test (tests/otlp.py). A canary goes in prompts (streamed and not), in a model name
the node refuses, in a path, in a query string, in an Authorization header and in a
knowledge-base name on the management listener; it must be in none of the exported
bytes, nor their decoded form, and neither must the client's API key.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from data_plane.settings import Settings
from shared.management import HEALTH_PATH, KNOWLEDGE_BASES_PATH
from tests.canary import new_marker, texts_containing
from tests.conftest import make_tenant, new_node
from tests.otlp import OtlpReceiver, attributes


def test_tracing_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SANCTUM_DP_TRACING__OTLP_ENDPOINT", raising=False)
    assert Settings().tracing.otlp_endpoint is None


@pytest.mark.model
def test_a_node_exports_route_spans_and_generation_counts_without_content(
    tmp_path: Path, model_spec
):
    marker = new_marker()
    with OtlpReceiver() as receiver:
        node = new_node(
            tmp_path,
            SANCTUM_DP_TRACING__OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        node.start()
        try:
            alice = make_tenant("alice", (model_spec.name,))
            node.push([model_spec], [alice])
            chat = {
                "model": model_spec.name,
                "messages": [{"role": "user", "content": f"Say {marker} twice."}],
                "max_tokens": 8,
            }
            with node.client(alice) as c:
                with c.stream("POST", "/chat/completions", json={**chat, "stream": True}) as s:
                    assert s.status_code == 200
                    s.read()
                assert c.post("/chat/completions", json=chat).status_code == 200
                # Refused requests whose messages could echo the canary.
                assert c.post("/chat/completions", json={**chat, "model": marker}).status_code in (
                    400,
                    404,
                )
                assert c.get(f"/{marker}").status_code == 404
                assert c.get(f"/models?q={marker}").status_code == 200
            refused = httpx.get(
                f"{node.api}/v1/models?{marker}={marker}",
                headers={"Authorization": f"Bearer {marker}", "User-Agent": marker},
            )
            assert refused.status_code == 401
            kb = httpx.get(
                f"{node.management}{KNOWLEDGE_BASES_PATH}/alice/{marker.lower()}",
                auth=node.management_auth(),
            )
            assert kb.status_code in (404, 503)

            def arrived(spans: list) -> bool:
                names = [s.name for _, s in spans]
                return names.count("sanctum.generation") >= 2 and (
                    names.count("POST /v1/chat/completions") >= 3
                )

            receiver.wait_for(arrived)
        finally:
            node.stop()  # flushes what is still batched

        spans = receiver.spans()
        assert {service for service, _ in spans} == {"sanctum-node"}
        by_name: dict[str, list] = {}
        for _, span in spans:
            by_name.setdefault(span.name, []).append(span)
        # No span per received body or sent chunk of a stream.
        assert not [n for n in by_name if n.endswith((" http send", " http receive"))]

        chats = by_name["POST /v1/chat/completions"]
        statuses = sorted(attributes(s).get("http.status_code") for s in chats)
        assert statuses[:2] == [200, 200] and statuses[2] in (400, 404)
        for span in chats:
            assert attributes(span)["http.route"] == "/v1/chat/completions"
        generations = by_name["sanctum.generation"]
        assert len(generations) == 2
        chat_ids = {s.span_id for s in chats}
        for span in generations:
            a = attributes(span)
            assert span.parent_span_id in chat_ids
            assert a["sanctum.client_id"] == "alice"
            assert a["sanctum.model"] == model_spec.name
            assert a["sanctum.prompt_tokens"] > 0
            assert 1 <= a["sanctum.completion_tokens"] <= 8
            assert a["sanctum.time_to_first_token_seconds"] >= 0
            assert a["sanctum.finish_reason"] in ("stop", "length")
        # The unrouted path is named by its method alone; the knowledge base by its route.
        assert "GET" in by_name
        kb_route = f"GET {KNOWLEDGE_BASES_PATH}/{{client_id}}/{{knowledge_base}}"
        assert kb_route in by_name

        texts = receiver.texts()
        assert texts_containing(marker, texts) == []
        assert texts_containing(marker.lower(), texts) == []
        assert texts_containing(alice.key, texts) == []


def test_a_clients_trace_context_is_dropped_and_the_control_planes_continued(tmp_path: Path):
    client_trace, cp_trace = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
    marker = new_marker()

    def traceparent(trace_id: str) -> dict[str, str]:
        return {
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            "tracestate": f"vendor={marker}",
        }

    with OtlpReceiver() as receiver:
        node = new_node(
            tmp_path,
            SANCTUM_DP_TRACING__OTLP_ENDPOINT=receiver.endpoint,
            SANCTUM_DP_RETRIEVAL__ENABLED="false",
        )
        node.start()
        try:
            assert httpx.get(
                f"{node.api}/health/live", headers=traceparent(client_trace)
            ).is_success
            health = httpx.get(
                f"{node.management}{HEALTH_PATH}",
                headers=traceparent(cp_trace),
                auth=node.management_auth(),
            )
            assert health.status_code < 500
        finally:
            node.stop()
        spans = {span.name: span for _, span in receiver.spans()}
        texts = receiver.texts()
    live = spans["GET /health/live"]
    assert live.trace_id.hex() != client_trace and live.parent_span_id == b""
    assert spans[f"GET {HEALTH_PATH}"].trace_id.hex() == cp_trace
    assert texts_containing(marker, texts) == []
