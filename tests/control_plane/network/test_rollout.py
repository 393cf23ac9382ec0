"""Gateway rollout: the config built from the database, signed, pushed, and the health
report (a signed request) that brings back each peer's latest handshake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from control_plane.core.choices import HealthStatus, ReleaseStatus
from control_plane.core.rollout import check_health, deliver, differs, needs_release, roll_out
from control_plane.core.signing import signer, target_trust
from control_plane.network.models import GatewayRelease, GatewayUpstream, Peer
from control_plane.network.rollout import GATEWAYS, build_gateway_config
from control_plane.network.services import disable_peer, provision_peer
from shared.gateway import open_gateway_config, open_preshared_key
from shared.trust import CONFIG
from shared.wireguard import generate_key_pair
from tests.control_plane.factories import ClientFactory, NodeFactory
from tests.control_plane.network.conftest import FakeAgent, make_gateway

pytestmark = pytest.mark.django_db


def test_the_config_lists_peers_seals_psks_and_derives_the_allow_list(gateway):
    acme, gone = ClientFactory(slug="acme"), ClientFactory(slug="gone")
    g = gateway.gateway
    active = provision_peer(acme, g, name="laptop").peer
    disabled = disable_peer(provision_peer(acme, g).peer, reason="lost")
    expired = provision_peer(acme, g, expires_at=timezone.now() + timedelta(seconds=30)).peer
    Peer.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    of_inactive = provision_peer(gone, g).peer
    gone.is_active = False
    gone.save()
    GatewayUpstream.objects.create(
        gateway=g, node=NodeFactory(name="n1"), host="10.0.0.5", port=8000
    )
    GatewayUpstream.objects.create(
        gateway=g, node=NodeFactory(name="n2", enabled=False), host="10.0.0.6", port=8000
    )

    config = build_gateway_config(g, 4)

    assert (config.version, config.gateway) == (4, "gw-1")
    assert config.interface.addresses == ("10.77.0.1/24", "fd77::1/64")
    assert config.interface.public_key == g.public_key
    by_id = {p.id: p for p in config.peers}
    assert set(by_id) == {f"peer-{p.pk}" for p in (active, disabled, expired, of_inactive)}
    assert [p.id for p in config.enabled_peers()] == [active.config_id]
    for peer in (disabled, expired, of_inactive):
        assert by_id[peer.config_id].preshared_key is None  # no PSK travels for them
    sealed = by_id[active.config_id].preshared_key
    assert sealed is not None and active.preshared_key not in sealed
    opened = open_preshared_key(
        sealed,
        gateway="gw-1",
        gateway_private_key=gateway.private_key,
        peer_public_key=active.public_key,
    )
    assert opened == active.preshared_key
    assert config.allow == ("10.77.0.2/32", "fd77::2/128")
    assert [(u.node, u.host, u.port) for u in config.upstreams] == [("n1", "10.0.0.5", 8000)]


def test_a_rollout_signs_pushes_and_the_agent_opens_the_psks(fake_agent_factory, on_commit):
    agent, keys = fake_agent_factory()
    peer = provision_peer(ClientFactory(slug="acme"), keys.gateway).peer

    with on_commit():
        (release,) = roll_out(GATEWAYS)

    release.refresh_from_db()
    assert release.status == ReleaseStatus.APPLIED and release.version == 1
    assert (
        open_gateway_config(release.signed_document, signer(CONFIG).public_key()).gateway == "gw-1"
    )
    assert agent.psks == {peer.public_key: peer.preshared_key}
    assert peer.preshared_key not in release.signed_document
    assert keys.gateway.state.applied_version == 1

    disable_peer(peer, reason="offboarded")
    with on_commit():
        (second,) = roll_out(GATEWAYS)
    second.refresh_from_db()
    assert second.status == ReleaseStatus.APPLIED and second.version == 2
    assert agent.held is not None and agent.held.enabled_peers() == []
    assert agent.held.allow == ()


def test_health_records_each_peers_handshake(fake_agent_factory, on_commit):
    agent, keys = fake_agent_factory()
    client = ClientFactory(slug="acme")
    talking = provision_peer(client, keys.gateway).peer
    silent = provision_peer(client, keys.gateway).peer
    with on_commit():
        roll_out(GATEWAYS)
    agent.handshakes = {talking.config_id: 1_760_000_000}

    state = check_health(GATEWAYS, keys.gateway)

    assert state.health_status == HealthStatus.OK and state.applied_version == 1
    talking.refresh_from_db()
    silent.refresh_from_db()
    assert talking.last_handshake_at == datetime.fromtimestamp(1_760_000_000, tz=UTC)
    assert silent.last_handshake_at is None


def test_health_without_a_valid_signature_is_refused_by_the_agent(fake_agent_factory):
    import httpx

    agent, _ = fake_agent_factory()
    assert httpx.get(f"{agent.url}/internal/health", timeout=60).status_code == 401


def test_a_gateway_that_is_down_fails_with_the_reason_and_catches_up(fake_agent_factory, on_commit):
    agent, keys = fake_agent_factory()
    provision_peer(ClientFactory(slug="acme"), keys.gateway)
    agent.stop()

    with on_commit():
        (release,) = roll_out(GATEWAYS)

    release.refresh_from_db()
    assert release.status == ReleaseStatus.FAILED
    assert "gateway unreachable" in release.last_error
    assert check_health(GATEWAYS, keys.gateway).health_status == HealthStatus.UNREACHABLE

    back = FakeAgent("gw-1", keys.private_key, target_trust(), keys.signing_key).start()
    try:
        keys.gateway.management_url = back.url
        keys.gateway.save()
        state = check_health(GATEWAYS, keys.gateway)
        release.refresh_from_db()
        assert release.status == ReleaseStatus.APPLIED
        assert back.held is not None and back.held.version == release.version
        assert state.applied_version == release.version
    finally:
        back.stop()


def test_a_release_older_than_what_the_gateway_holds_is_never_sent(fake_agent_factory):
    agent, _ = fake_agent_factory()
    old = roll_out(GATEWAYS)[0]  # not pushed: no commit in this test
    new = roll_out(GATEWAYS)[0]
    assert deliver(GATEWAYS, new).status == ReleaseStatus.APPLIED
    assert deliver(GATEWAYS, old).status == ReleaseStatus.SUPERSEDED
    assert agent.held is not None and agent.held.version == new.version


def test_the_api_creates_gateways_and_rolls_out(admin_api, auditor_api, fake_agent_factory):
    node = NodeFactory(name="node-1")
    agent, keys = fake_agent_factory("gw-existing")
    pool = admin_api.post(
        "/api/address-pools/",
        {"name": "pool-2", "ipv4_cidr": "10.78.0.0/24", "ipv6_cidr": "fd78::/64"},
        format="json",
    )
    assert pool.status_code == 201, pool.json()
    assert pool.json()["gateway_addresses"] == ["10.78.0.1", "fd78::1"]
    bad_pool = admin_api.post(
        "/api/address-pools/", {"name": "p3", "ipv4_cidr": "10.0.0.1/24"}, format="json"
    )
    assert bad_pool.status_code == 400 and set(bad_pool.json()) == {"ipv4_cidr"}
    created = admin_api.post(
        "/api/gateways/",
        {
            "name": "gw-2",
            "public_endpoint": "198.51.100.7:51820",
            # a key of its own (editing the existing one's last characters could give
            # the same key back: its final base64 character carries padding bits)
            "public_key": generate_key_pair()[1],
            "management_url": agent.url,
            "pool": "pool-2",
            "upstreams": [{"node": node.name, "host": "10.200.0.2", "port": 8000}],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["api_base"] == "https://10.78.0.1/v1"
    assert created.json()["upstreams"] == [{"node": "node-1", "host": "10.200.0.2", "port": 8000}]
    gateway_body = {
        "name": "gw-3",
        "public_endpoint": "not an endpoint",
        "public_key": "short",
        "management_url": agent.url,
        "pool": "pool-2",
    }
    invalid = admin_api.post("/api/gateways/", gateway_body, format="json")
    assert invalid.status_code == 400
    assert set(invalid.json()) == {"public_endpoint", "public_key"}
    gateway_body.update(public_endpoint="[2001:db8::7]:51820", public_key="A" * 43 + "=")
    taken = admin_api.post("/api/gateways/", gateway_body, format="json")
    assert taken.status_code == 400 and set(taken.json()) == {"pool"}

    denied = auditor_api.post(
        "/api/gateway-releases/", {"gateways": ["gw-existing"]}, format="json"
    )
    released = admin_api.post(
        "/api/gateway-releases/", {"gateways": ["gw-existing"]}, format="json"
    )
    assert denied.status_code == 403
    assert released.status_code == 202, released.json()
    assert released.json()[0]["gateway"] == "gw-existing"
    assert GatewayRelease.objects.filter(gateway=keys.gateway).count() == 1
    assert admin_api.post(f"/api/gateways/{keys.gateway.pk}/rollout/").status_code == 202


def test_pools_and_gateways_in_use_are_not_deleted(admin_api, gateway):
    provision_peer(ClientFactory(slug="acme"), gateway.gateway)
    pool_id = gateway.gateway.pool_id
    assert admin_api.delete(f"/api/gateways/{gateway.gateway.pk}/").status_code == 409
    assert admin_api.delete(f"/api/address-pools/{pool_id}/").status_code == 409
    moved = admin_api.patch(
        f"/api/address-pools/{pool_id}/", {"ipv4_cidr": "10.1.0.0/24"}, format="json"
    )
    assert moved.status_code == 400 and set(moved.json()) == {"ipv4_cidr"}


def test_only_one_gateway_per_pool(gateway):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        other = make_gateway("gw-other", ipv4="10.79.0.0/24", ipv6="")
        other.gateway.pool = gateway.gateway.pool
        other.gateway.save()


def test_sealing_anew_is_not_a_change_but_an_older_sealed_format_is(fake_agent_factory, on_commit):
    """Every build seals the PSKs again (HPKE draws a fresh key), so the sealed text
    always differs; what the gateway should hold has not changed for that. A release
    whose PSKs are sealed in a format the agent no longer reads (v1, before HPKE) has."""
    _, keys = fake_agent_factory()
    provision_peer(ClientFactory(slug="acme"), keys.gateway)
    with on_commit():
        (release,) = roll_out(GATEWAYS)

    assert not differs(GATEWAYS, keys.gateway)
    assert needs_release(GATEWAYS, keys.gateway) is None

    old = dict(release.document)
    old["peers"] = [
        {**p, "preshared_key": "v1." + p["preshared_key"].removeprefix("v2.")} for p in old["peers"]
    ]
    GatewayRelease.objects.filter(pk=release.pk).update(document=old)
    assert differs(GATEWAYS, keys.gateway)
    assert needs_release(GATEWAYS, keys.gateway) == "what it should hold changed"
