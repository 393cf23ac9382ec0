"""The node's Prometheus metrics and its health on the client listener, on a real node.

Scraped as Prometheus scrapes (a bearer token on the metrics listener), after real
chats with the bundled model; the scrape output is searched for a canary sent in the
prompts. (tests/e2e/test_prometheus.py has a real Prometheus scrape the same endpoint.)
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.canary import new_marker, texts_containing
from tests.conftest import Node, Tenant, free_port, make_tenant, new_node

pytestmark = pytest.mark.model


def scrape(node: Node, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(node.metrics, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return samples(response.text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def token_file(tmp_path: Path) -> tuple[Path, str]:
    token = secrets.token_urlsafe(32)
    path = tmp_path / "metrics.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path, token


@pytest.fixture
def scraped_node(tmp_path: Path, token_file: tuple[Path, str]):
    node = new_node(
        tmp_path,
        SANCTUM_DP_METRICS__TOKEN_FILE=str(token_file[0]),
        SANCTUM_DP_METRICS__PORT=str(free_port()),
        SANCTUM_DP_METRICS__PER_CLIENT="true",
    )
    node.start()
    yield node
    node.stop()


def test_health_on_the_client_listener_says_ready_only_with_config_and_models(
    scraped_node: Node, model_spec
):
    api = httpx.Client(base_url=scraped_node.api)
    assert api.get("/health/live").json() == {"status": "live"}
    not_ready = api.get("/health/ready")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "not_ready", "reason": "no_config"}
    assert not_ready.headers["retry-after"] == "5"

    scraped_node.push([model_spec], [make_tenant("alice", (model_spec.name,))])
    ready = api.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_a_scrape_needs_the_token_and_shows_the_work_without_its_content(
    scraped_node: Node, model_spec, token_file: tuple[Path, str]
):
    _, token = token_file
    assert httpx.get(scraped_node.metrics).status_code == 401
    wrong = httpx.get(scraped_node.metrics, headers={"Authorization": "Bearer " + "x" * 43})
    assert wrong.status_code == 401 and "www-authenticate" in wrong.headers
    assert httpx.get(scraped_node.metrics.replace("/metrics", "/")).status_code == 404
    before = scrape(scraped_node, token)
    assert value(before, "sanctum_node_config_version") == -1
    assert value(before, "sanctum_node_ready") == 0

    alice: Tenant = make_tenant("alice", (model_spec.name,))
    scraped_node.push([model_spec], [alice])
    marker = new_marker()
    with scraped_node.client(alice) as c:
        for _ in range(2):
            with c.stream(
                "POST",
                "/chat/completions",
                json={
                    "model": model_spec.name,
                    "messages": [{"role": "user", "content": f"Say {marker} twice."}],
                    "max_tokens": 12,
                    "stream": True,
                },
            ) as streamed:
                assert streamed.status_code == 200
                streamed.read()
        # A path nobody routes, named after the canary: counted, never labelled by it.
        assert c.get(f"/{marker}").status_code == 404

    text = httpx.get(scraped_node.metrics, headers={"Authorization": f"Bearer {token}"}).text
    assert texts_containing(marker, {"scrape": text}) == []
    found = samples(text)
    model = model_spec.name
    chat = {"listener": "api", "route": "/v1/chat/completions", "status": "200"}
    assert value(found, "sanctum_node_requests_total", **chat) == 2
    assert value(found, "sanctum_node_requests_total", listener="api", route="-", status="404") == 1
    assert value(found, "sanctum_node_time_to_first_token_seconds_count", model=model) == 2
    assert value(found, "sanctum_node_inter_token_seconds_count", model=model) >= 2
    completion = value(found, "sanctum_node_completion_tokens_total", model=model)
    assert 2 <= completion <= 24
    assert value(found, "sanctum_node_prompt_tokens_total", model=model) > 0
    assert (
        value(
            found,
            "sanctum_node_client_tokens_total",
            client="alice",
            model=model,
            kind="completion",
        )
        == completion
    )
    info = [dict(labels) for name, labels in found if name == "sanctum_node_model_info"]
    assert info == [{"model": model, "version": model_spec.version, "sha256": model_spec.sha256}]
    assert value(found, "sanctum_node_config_version") == scraped_node.version
    assert value(found, "sanctum_node_ready") == 1
    assert value(found, "sanctum_node_slots", model=model) >= 1
    assert value(found, "sanctum_node_sessions_open") == 0  # one-shot chats ended
    assert value(found, "sanctum_node_queue_depth", queue="prompt_builder") == 0


def test_a_token_file_others_can_read_stops_the_node(tmp_path: Path, token_file):
    path, _ = token_file
    path.chmod(0o644)
    node = new_node(
        tmp_path,
        SANCTUM_DP_METRICS__TOKEN_FILE=str(path),
        SANCTUM_DP_METRICS__PORT=str(free_port()),
    )
    with pytest.raises(RuntimeError, match="make it 0600"):
        node.start(timeout=60)
