"""The gateway agent's Prometheus metrics, with real nginx (WireGuard is the agent tests'
stand-in; tests/e2e/test_prometheus.py scrapes a gateway with a real tunnel)."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from data_plane.gateway.metrics import GatewayMetrics
from tests.data_plane.gateway.conftest import NEEDS_NGINX, Kit
from tests.data_plane.gateway.test_agent import nginx_answer, put, running_agent

pytestmark = NEEDS_NGINX


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_peers_handshakes_bytes_and_nginx_answers_by_status(kit: Kit) -> None:
    kit.add_peer(2)
    kit.add_peer(3)
    with running_agent(kit) as (client, agent):
        metrics = GatewayMetrics(agent.settings.nginx_log_dir)
        client.portal.call(metrics.refresh, agent)
        before = samples(metrics)
        assert before[("sanctum_gateway_config_version", ())] == -1
        assert before[("sanctum_gateway_nginx_up", ())] == 1

        assert put(client, kit.sign(kit.config(disabled=("peer-3",)))).status_code == 200
        for _ in range(3):  # not a peer: 444, counted by status
            assert nginx_answer(kit.http_port, "127.0.0.1") == b""
        # nginx writes its log line after the answer: read until all three are in.
        for _ in range(50):
            client.portal.call(metrics.refresh, agent)
            found = samples(metrics)
            if found.get(("sanctum_gateway_nginx_responses_total", (("status", "444"),))) == 3:
                break
            client.portal.call(asyncio.sleep, 0.1)
        assert found[("sanctum_gateway_nginx_responses_total", (("status", "444"),))] == 3
        assert found[("sanctum_gateway_config_version", ())] == 1
        assert found[("sanctum_gateway_peers", ())] == 1
        peer = (("client", "acme"), ("peer", "peer-2"))
        assert found[("sanctum_gateway_peer_latest_handshake_timestamp_seconds", peer)] == (
            1_700_000_000
        )
        assert ("sanctum_gateway_peer_received_bytes_total", peer) in found
        assert found[("sanctum_gateway_peers_connected", ())] == 0  # 2023's handshake
        # Labels are the config's ids: no tunnel address, no key.
        text = generate_latest(metrics.registry).decode()
        assert "10.77.0." not in text and kit.wg_public not in text
