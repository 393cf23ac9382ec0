"""The gateway agent applies a config only when signed, for it, newer and nginx-valid.

nginx is real (``nginx -t``, reload, the 444); WireGuard is a stand-in that records what
``wg syncconf`` would get (the real one is proven in tests/e2e/test_wireguard.py).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from data_plane.gateway.agent import GatewayAgent
from data_plane.gateway.app import create_app
from shared import envelope
from shared.backbone import BackboneInterface, BackbonePeer
from shared.gateway import Upstream
from shared.keys import generate_private_key
from shared.management import CONFIG_PATH, HEALTH_PATH, JOSE
from shared.signed_request import open_answer
from shared.wireguard import generate_key_pair
from tests.conftest import REPO, wait_until
from tests.data_plane.gateway.conftest import NEEDS_NGINX, FakeWireGuard, Kit
from tests.e2e.netns import lab

pytestmark = NEEDS_NGINX

HEALTH = HEALTH_PATH


@contextmanager
def running_agent(
    kit: Kit, wg: FakeWireGuard | None = None, **overrides: object
) -> Iterator[tuple[TestClient, GatewayAgent]]:
    settings = kit.settings(**overrides)
    agent = GatewayAgent(settings, wireguard=wg or FakeWireGuard())  # type: ignore[arg-type]
    with TestClient(create_app(agent), base_url="http://gw") as client:
        client.portal.call(agent.start)
        client.kit = kit  # type: ignore[attr-defined]
        yield client, agent


def put(client: TestClient, token: str, **signing: Any):
    """A config push signed for this gateway, as the control plane sends it."""
    kit: Kit = client.kit  # type: ignore[attr-defined]
    headers, _ = kit.signed("PUT", CONFIG_PATH, token.encode(), **signing)
    return client.put(CONFIG_PATH, content=token, headers={"Content-Type": JOSE, **headers})


def held(agent: GatewayAgent) -> int:
    return agent.store.current.version if agent.store.current else 0


def health(client: TestClient, kit: Kit) -> dict:
    headers, jti = kit.signed("GET", HEALTH)
    response = client.get(HEALTH, headers=headers)
    assert response.status_code == 200, response.text
    return open_answer(
        response.content, kit.gateway_key.public_key(), nonce=jti, audience="control-plane"
    )


def nginx_answer(port: int, source: str = "127.0.0.1") -> bytes:
    """Everything nginx sends back to a plain GET from ``source`` (b"" for a 444)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def test_signed_config_is_applied_and_survives_a_restart(kit: Kit) -> None:
    kit.add_peer(2)
    kit.add_peer(3)
    wg = FakeWireGuard()
    config = kit.config()
    token = kit.sign(config)
    with running_agent(kit, wg) as (client, agent):
        # Before any config nginx is up and lets nobody in.
        assert agent.nginx.master_pid() is not None
        assert nginx_answer(kit.http_port, "127.0.0.2") == b""
        response = put(client, token)
        assert response.status_code == 200, response.text
        assert response.json() == {"version": 1, "applied": True, "peers": 2}
    # WireGuard got each peer's PSK, opened with the gateway's key.
    applied, private, psks = wg.synced[-1]
    assert applied.version == 1 and private == kit.wg_private
    assert psks == {p.public_key: p.psk for p in kit.peers}
    # nginx now maps the peers' tunnel addresses; the saved config holds no usable PSK.
    rendered = kit.settings().nginx_config.read_text()
    assert "10.77.0.2/32 1;" in rendered and "10.77.0.3/32 1;" in rendered
    saved = kit.settings().config_path.read_text()
    assert saved == token and not any(p.psk in saved for p in kit.peers)

    wg2 = FakeWireGuard()
    with running_agent(kit, wg2) as (client, agent):
        assert held(agent) == 1
        assert wg2.synced and wg2.synced[-1][0].version == 1  # re-applied at start
        stale = put(client, token)
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "stale_version"
        assert stale.json()["current_version"] == 1


def test_peers_get_through_nginx_and_others_get_444(kit: Kit) -> None:
    kit.add_peer(2)
    with running_agent(kit) as (client, _):
        assert put(client, kit.sign(kit.config())).status_code == 200
        # nginx binds 127.0.0.1; the kernel keeps the source address we bind to, so a
        # socket from 127.0.0.2 stands in for a peer (allow-list 10.77.0.2 does not hold
        # it) and nothing comes back at all.
        assert nginx_answer(kit.http_port, "127.0.0.1") == b""
    rendered = kit.settings().nginx_config.read_text()
    assert "return 444;" in rendered and "server_tokens off;" in rendered


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        ("unsigned", 401, "bad_signature"),
        ("other_key", 401, "bad_signature"),
        ("other_gateway", 409, "wrong_target"),
        ("other_wg_key", 409, "wrong_gateway_key"),
        ("garbage", 401, "bad_signature"),
        ("off_contract", 400, "invalid_config"),
    ],
)
def test_bad_configs_are_refused_and_the_last_good_one_stays(
    kit: Kit, mutate: str, status: int, code: str
) -> None:
    kit.add_peer(2)
    wg = FakeWireGuard()
    with running_agent(kit, wg) as (client, agent):
        assert put(client, kit.sign(kit.config())).status_code == 200
        before = kit.settings().nginx_config.read_text()
        kit.add_peer(3)
        if mutate == "unsigned":
            token = kit.sign(kit.config())[:-10] + "AAAAAAAAAA"
        elif mutate == "other_key":
            token = kit.sign(kit.config(), generate_private_key())
        elif mutate == "other_gateway":
            token = kit.sign(kit.config(gateway="gw-other"))
        elif mutate == "other_wg_key":
            token = kit.sign(kit.config(sealed_to=generate_key_pair()[1]))
        elif mutate == "off_contract":
            doc = kit.config().document()
            doc["allow"] = []  # not what the peers derive
            token = envelope.sign(doc, kit.cp_key, envelope.TYP_GATEWAY_CONFIG)
        else:
            token = "not-a-jws"
        response = put(client, token)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert held(agent) == 1
        assert len(wg.synced) == 1
        assert kit.settings().nginx_config.read_text() == before


def test_config_nginx_refuses_keeps_the_last_good_one(kit: Kit) -> None:
    kit.add_peer(2)
    wg = FakeWireGuard()
    with running_agent(kit, wg) as (client, agent):
        assert put(client, kit.sign(kit.config())).status_code == 200
        before = kit.settings().nginx_config.read_text()
        pid = agent.nginx.master_pid()
        kit.add_peer(3)
        # An upstream name that does not resolve: nginx -t fails on it.
        bad = kit.config(upstreams=(Upstream(node="node-9", host="no-such-node.invalid", port=80),))
        response = put(client, kit.sign(bad))
        assert response.status_code == 422
        error = response.json()["error"]
        assert (
            error["code"] == "nginx_config_invalid" and "no-such-node.invalid" in error["message"]
        )
        assert kit.settings().nginx_config.read_text() == before
        assert len(wg.synced) == 1  # WireGuard was not touched
        assert agent.nginx.master_pid() == pid
        health = agent.last_error
        assert health is not None and "nginx" in health
        # The next good config goes through.
        response = put(client, kit.sign(kit.config()))
        assert response.status_code == 200
        assert "10.77.0.3/32 1;" in kit.settings().nginx_config.read_text()
        assert agent.last_error is None


def test_failed_wireguard_sync_is_reported_and_not_saved(kit: Kit) -> None:
    kit.add_peer(2)
    wg = FakeWireGuard()
    with running_agent(kit, wg) as (client, agent):
        assert put(client, kit.sign(kit.config())).status_code == 200
        wg.fail_next = True
        response = put(client, kit.sign(kit.config(disabled=("peer-2",))))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "wireguard_apply_failed"
        # The output of a wg fed keys is withheld from the error.
        assert "withheld" in response.json()["error"]["message"]
        assert held(agent) == 1
        # WireGuard was put back to version 1.
        assert wg.synced[-1][0].version == 1


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root")
def test_a_firewall_that_cannot_filter_ipv6_fails_the_config(kit: Kit, tmp_path: Path) -> None:
    """The real firewall script, in a namespace of its own with IPv6 and without
    ip6tables-restore: the agent answers 503, keeps the config unsaved and its health
    names the cause."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "iptables", "iptables-restore", "ip6tables"):
        found = shutil.which(tool)
        assert found, f"{tool} not installed"
        (bin_dir / tool).symlink_to(found)
    script = REPO / "infra" / "scripts" / "gateway-firewall.sh"
    with lab() as the_lab:
        ns = the_lab.namespace("gwfw")
        wrapper = tmp_path / "firewall-in-namespace.sh"
        wrapper.write_text(
            f'#!/usr/bin/env bash\nexec ip netns exec {ns.name} env PATH={bin_dir} {script} "$@"\n'
        )
        wrapper.chmod(0o755)
        kit.add_peer(2)
        with running_agent(kit, firewall={"script": wrapper}) as (client, agent):
            response = put(client, kit.sign(kit.config()))
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "firewall_reload_failed"
            assert "has IPv6 but ip6tables-restore is not installed" in error["message"]
            assert held(agent) == 0
            report = health(client, kit)
            assert report["status"] == "degraded"
            assert any("ip6tables-restore" in p for p in report["problems"])


def test_health_needs_a_signed_request_and_reports_handshakes(kit: Kit) -> None:
    kit.add_peer(2)
    kit.add_peer(3)
    with running_agent(kit) as (client, _):
        assert put(client, kit.sign(kit.config(disabled=("peer-3",)))).status_code == 200
        assert client.get(HEALTH).status_code == 401
        other_key, _ = kit.signed("GET", HEALTH, key=generate_private_key())
        assert client.get(HEALTH, headers=other_key).status_code == 401
        elsewhere, _ = kit.signed("GET", HEALTH, audience="another-gateway")
        assert client.get(HEALTH, headers=elsewhere).status_code == 401
        body = health(client, kit)
        assert body["status"] == "ok" and body["config_version"] == 1
        assert body["interface"]["public_key"] == kit.wg_public
        assert [(p["id"], p["latest_handshake"]) for p in body["peers"]] == [
            ("peer-2", 1_700_000_000)
        ]
        once, _ = kit.signed("GET", HEALTH)
        response = client.get(HEALTH, headers=once)
        assert "preshared_key" not in response.text and kit.wg_private not in response.text
        replayed = client.get(HEALTH, headers=once)
        assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]["message"]


def test_oversized_and_empty_bodies_are_refused(kit: Kit) -> None:
    with running_agent(kit, max_config_bytes=2048) as (client, _):
        assert put(client, "x" * 4096).status_code == 413
        assert put(client, "").status_code == 400
        assert client.get("/internal/nope").status_code == 404


def test_agent_starts_without_config_and_nginx_lets_nobody_in(kit: Kit) -> None:
    with running_agent(kit) as (_, agent):
        assert agent.store.current is None
        assert wait_until(lambda: agent.nginx.master_pid() is not None, timeout=10)
        assert nginx_answer(kit.http_port) == b""


def test_a_config_push_must_be_signed_for_this_gateway(kit: Kit) -> None:
    kit.add_peer(2)
    with running_agent(kit) as (client, agent):
        token = kit.sign(kit.config())
        unsigned = client.put(CONFIG_PATH, content=token, headers={"Content-Type": JOSE})
        elsewhere = put(client, token, audience="another-gateway")
        by_config_key = put(client, token, key=kit.cp_key)
        for response in (unsigned, elsewhere, by_config_key):
            assert response.status_code == 401, response.text
        assert agent.store.current is None
        assert put(client, token).status_code == 200


def test_an_older_config_stays_refused_after_a_restart_that_lost_the_saved_one(kit: Kit) -> None:
    kit.add_peer(2)
    older = kit.sign(kit.config())
    with running_agent(kit) as (client, _):
        assert put(client, kit.sign(kit.config())).status_code == 200  # version 2
    (kit.state / "gateway-config.jws").write_text("garbage")
    with running_agent(kit) as (client, agent):
        assert agent.store.current is None
        stale = put(client, older)
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_version"


def test_an_expired_config_is_refused_and_one_that_expires_takes_every_peer_down(
    kit: Kit,
) -> None:
    kit.add_peer(2)
    wg = FakeWireGuard()
    past = datetime.now(UTC) - timedelta(minutes=1)
    with running_agent(kit, wg) as (client, agent):
        expired = put(client, kit.sign(kit.config(expires_at=past)))
        assert expired.status_code == 422
        assert expired.json()["error"]["code"] == "config_expired"
        soon = datetime.now(UTC) + timedelta(seconds=2)
        assert put(client, kit.sign(kit.config(expires_at=soon))).status_code == 200
        assert [p.id for p in wg.synced[-1][0].enabled_peers()] == ["peer-2"]
        wg.fail_next = True  # wg syncconf fails once: the interface goes down instead
        client.portal.call(_watch_once, agent)
        assert wg.downs == ["wgt0"]
        assert wg.synced[-1][0].enabled_peers() == []  # nobody is a peer any more
        report = health(client, kit)
        assert report["status"] == "degraded"
        assert any("expired" in p for p in report["problems"])
        assert put(client, kit.sign(kit.config())).status_code == 200
        assert [p.id for p in wg.synced[-1][0].enabled_peers()] == ["peer-2"]


async def _watch_once(agent: GatewayAgent) -> None:
    """Let the expiry watcher run until it has acted (it checks every 0.1 s here)."""
    import asyncio

    task = asyncio.create_task(agent.watch_expiry(every=0.1))
    for _ in range(100):
        await asyncio.sleep(0.1)
        if agent.store.current and agent.store.problems():
            await asyncio.sleep(0.3)
            break
    task.cancel()


def test_a_config_on_the_backbone_needs_this_gateways_backbone_key(kit: Kit) -> None:
    backbone_private, backbone_public = generate_key_pair()
    node_public = generate_key_pair()[1]

    def on_backbone(public: str) -> Any:
        return kit.config(
            upstreams=(Upstream(node="node-1", host="10.90.0.2", port=8000),),
            backbone=BackboneInterface(
                public_key=public,
                address="10.90.0.3/24",
                peers=(
                    BackbonePeer(
                        name="node-1",
                        public_key=node_public,
                        address="10.90.0.2",
                        endpoint="10.0.0.5:51821",
                    ),
                ),
            ),
        )

    key_file = kit.state / "backbone.key"
    wg = FakeWireGuard()
    with running_agent(kit, wg) as (client, _agent):
        refused = put(client, kit.sign(on_backbone(backbone_public)))
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "backbone_not_configured"
    key_file.write_text(backbone_private + "\n")
    key_file.chmod(0o600)
    with running_agent(kit, wg, wireguard={"backbone_private_key": key_file}) as (client, _):
        wrong = put(client, kit.sign(on_backbone(generate_key_pair()[1])))
        assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "wrong_backbone_key"
        assert wg.backbones == []
        applied = put(client, kit.sign(on_backbone(backbone_public)))
        assert applied.status_code == 200, applied.text
        ((backbone, private),) = wg.backbones
        assert private == backbone_private and backbone.peers[0].endpoint == "10.0.0.5:51821"
        assert "server 10.90.0.2:8000" in kit.settings().nginx_config.read_text()
