"""The backbone in the control plane: members join a backbone pool, each one's signed
config lists the others it may talk to, and nginx's upstreams move to backbone addresses.
The tunnels themselves are proven in tests/e2e/test_wireguard.py."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from control_plane.core.errors import Conflict
from control_plane.fleet.rollout import build_bundle
from control_plane.network.backbone import join_backbone
from control_plane.network.choices import PoolPurpose
from control_plane.network.models import AddressPool, GatewayUpstream
from control_plane.network.rollout import build_gateway_config
from shared.backbone import render_syncconf
from shared.gateway import GatewayConfig
from shared.wireguard import generate_key_pair
from tests.control_plane.factories import NodeFactory
from tests.control_plane.network.conftest import make_gateway

pytestmark = pytest.mark.django_db


def backbone_pool(cidr: str = "10.90.0.0/24", name: str = "backbone") -> AddressPool:
    return AddressPool.objects.create(name=name, purpose=PoolPurpose.BACKBONE, ipv4_cidr=cidr)


def key() -> str:
    return generate_key_pair()[1]


def test_members_get_addresses_and_see_only_their_counterparts():
    pool = backbone_pool()
    g = make_gateway().gateway
    n1, n2, other = NodeFactory(name="n1"), NodeFactory(name="n2"), NodeFactory(name="n3")
    for node, host in ((n1, "10.0.0.5"), (n2, "10.0.0.6")):
        GatewayUpstream.objects.create(gateway=g, node=node, host=host, port=8000)
    m1 = join_backbone(pool, node=n1, public_key=key(), endpoint="10.0.0.5:51821")
    m2 = join_backbone(pool, node=n2, public_key=key(), endpoint="10.0.0.6:51821")
    join_backbone(pool, node=other, public_key=key(), endpoint="10.0.0.7:51821")
    mg = join_backbone(pool, gateway=g, public_key=key())
    assert [m1.address, m2.address, mg.address] == ["10.90.0.2", "10.90.0.3", "10.90.0.5"]

    config = build_gateway_config(g, 1)
    assert config.backbone is not None
    assert config.backbone.address == "10.90.0.5/24"
    assert [(p.name, p.address, p.endpoint) for p in config.backbone.peers] == [
        ("n1", "10.90.0.2", "10.0.0.5:51821"),
        ("n2", "10.90.0.3", "10.0.0.6:51821"),
    ]  # n3 is on the backbone but behind no upstream of this gateway: not a peer
    # nginx goes to the backbone addresses, not the hosts registered before.
    assert [(u.node, u.host) for u in config.upstreams] == [
        ("n1", "10.90.0.2"),
        ("n2", "10.90.0.3"),
    ]

    bundle = build_bundle(n1, 1)
    assert bundle.backbone is not None and bundle.backbone.host == "10.90.0.2"
    # The node's view: the gateway, with no endpoint (the gateway calls, the node answers).
    assert [(p.name, p.address, p.endpoint) for p in bundle.backbone.peers] == [
        ("gw-1", "10.90.0.5", None)
    ]
    assert build_bundle(other, 1).backbone.peers == ()
    text = render_syncconf(config.backbone, generate_key_pair()[0])
    assert "Endpoint = 10.0.0.5:51821" in text and "AllowedIPs = 10.90.0.2/32" in text


def test_a_gateway_on_the_backbone_leaves_out_nodes_that_are_not():
    pool = backbone_pool()
    g = make_gateway().gateway
    on, off = NodeFactory(name="on"), NodeFactory(name="off")
    GatewayUpstream.objects.create(gateway=g, node=on, host="10.0.0.5", port=8000)
    GatewayUpstream.objects.create(gateway=g, node=off, host="10.0.0.6", port=8000)
    # Before the gateway joins, it reaches both at their registered hosts.
    before = build_gateway_config(g, 1).upstreams
    assert {u.node: u.host for u in before} == {"on": "10.0.0.5", "off": "10.0.0.6"}
    join_backbone(pool, node=on, public_key=key(), endpoint="10.0.0.5:51821")
    join_backbone(pool, gateway=g, public_key=key())
    assert [u.node for u in build_gateway_config(g, 2).upstreams] == ["on"]


def test_the_contract_refuses_an_upstream_off_the_backbone():
    pool = backbone_pool()
    g = make_gateway().gateway
    node = NodeFactory(name="n1")
    GatewayUpstream.objects.create(gateway=g, node=node, host="10.0.0.5", port=8000)
    join_backbone(pool, node=node, public_key=key(), endpoint="10.0.0.5:51821")
    join_backbone(pool, gateway=g, public_key=key())
    document = build_gateway_config(g, 1).document()
    document["upstreams"][0]["host"] = "10.0.0.5"  # what a forged or buggy config would say
    with pytest.raises(ValueError, match="not at its backbone address"):
        GatewayConfig.model_validate(document)


def test_joining_is_checked():
    pool = backbone_pool("10.90.0.0/30")  # room for one member (.1 is never handed out)
    tunnel = AddressPool.objects.create(name="tunnel", ipv4_cidr="10.91.0.0/24")
    n1, n2 = NodeFactory(name="n1"), NodeFactory(name="n2")
    with pytest.raises(ValidationError, match="purpose is backbone"):
        join_backbone(tunnel, node=n1, public_key=key(), endpoint="10.0.0.5:51821")
    with pytest.raises(ValidationError, match="host:port"):
        join_backbone(pool, node=n1, public_key=key())
    with pytest.raises(ValidationError, match="either a node or a gateway"):
        join_backbone(pool, public_key=key())
    join_backbone(pool, node=n1, public_key=key(), endpoint="10.0.0.5:51821")
    with pytest.raises((ValidationError, Conflict), match="no backbone address left"):
        join_backbone(pool, node=n2, public_key=key(), endpoint="10.0.0.6:51821")


def test_the_api_joins_members_and_keeps_tunnel_and_backbone_pools_apart(admin_api, auditor_api):
    node = NodeFactory(name="n1")
    assert (
        admin_api.post(
            "/api/address-pools/",
            {"name": "bb", "purpose": "backbone", "ipv4_cidr": "10.90.0.0/24"},
            format="json",
        ).status_code
        == 201
    )
    body = {"pool": "bb", "node": "n1", "public_key": key(), "endpoint": "10.0.0.5:51821"}
    assert auditor_api.post("/api/backbone-members/", body, format="json").status_code == 403
    created = admin_api.post("/api/backbone-members/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["address"] == "10.90.0.2" and created.json()["name"] == "n1"
    assert node.backbone.address == "10.90.0.2"
    again = admin_api.post("/api/backbone-members/", {**body, "public_key": key()}, format="json")
    assert again.status_code == 400  # one membership per node
    no_endpoint = admin_api.post(
        "/api/backbone-members/",
        {"pool": "bb", "node": NodeFactory(name="n2").name, "public_key": key()},
        format="json",
    )
    assert no_endpoint.status_code == 400 and "endpoint" in no_endpoint.json()
    # A gateway's tunnel pool can't be a backbone pool, and the other way round.
    gateway = admin_api.post(
        "/api/gateways/",
        {
            "name": "gw-x",
            "public_endpoint": "gw.example.net:51820",
            "public_key": key(),
            "management_url": "http://10.0.0.1:8003",
            "pool": "bb",
        },
        format="json",
    )
    assert gateway.status_code == 400 and "pool" in gateway.json()
    pool_id = AddressPool.objects.get(name="bb").pk
    changed = admin_api.patch(
        f"/api/address-pools/{pool_id}/", {"purpose": "tunnel"}, format="json"
    )
    assert changed.status_code == 400 and "purpose" in changed.json()
    assert admin_api.delete(f"/api/address-pools/{pool_id}/").status_code == 409


def test_pools_never_overlap_and_a_used_backbone_keeps_its_network(admin_api):
    backbone_pool("10.90.0.0/24")
    for cidr in ("10.90.0.128/25", "10.0.0.0/8"):
        body = {"name": f"p{cidr[:6]}", "purpose": "tunnel", "ipv4_cidr": cidr}
        refused = admin_api.post("/api/address-pools/", body, format="json")
        assert refused.status_code == 400 and "overlaps pool backbone" in str(refused.json())
    pool = AddressPool.objects.get(name="backbone")
    join_backbone(pool, node=NodeFactory(name="n1"), public_key=key(), endpoint="10.0.0.5:51821")
    moved = admin_api.patch(
        f"/api/address-pools/{pool.pk}/", {"ipv4_cidr": "10.91.0.0/24"}, format="json"
    )
    assert moved.status_code == 400 and "in use" in str(moved.json())
