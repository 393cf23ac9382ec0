"""Placement: node pools, what each node's config holds, where gateways route, capacity."""

from __future__ import annotations

import pytest
from django.test import Client as BrowserClient
from django.utils import timezone
from pydantic import ValidationError as ContractError

from control_plane.clients.services import save_client
from control_plane.core.choices import HealthStatus
from control_plane.fleet.choices import PoolKind
from control_plane.fleet.models import DEFAULT_POOL, NodePool, NodeState, default_pool_id
from control_plane.fleet.rollout import build_bundle
from control_plane.knowledge.choices import CopyStatus
from control_plane.knowledge.models import DocumentCopy, KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.services import serving_nodes
from control_plane.network.models import GatewayUpstream
from control_plane.network.rollout import build_gateway_config
from control_plane.network.services import provision_peer
from control_plane.registry.services import pin_model
from shared.config import ConfigBundle
from tests.control_plane.factories import (
    ClientFactory,
    ModelPinFactory,
    NodeFactory,
    model_file,
)
from tests.control_plane.network.conftest import make_gateway

pytestmark = pytest.mark.django_db


@pytest.fixture
def pools() -> dict[str, NodePool]:
    return {
        "solo": NodePool.objects.create(name="solo", kind=PoolKind.DEDICATED),
        "shared": NodePool.objects.create(name="shared", kind=PoolKind.SHARED),
    }


def test_a_nodes_config_holds_only_what_is_placed_on_its_pool(pools):
    solo, shared = pools["solo"], pools["shared"]
    bank = ClientFactory(slug="bank", pool=solo, requests_per_minute=100)
    clinic = ClientFactory(slug="clinic", pool=shared, requests_per_minute=100)
    lab = ClientFactory(slug="lab", pool=shared)
    ModelPinFactory(name="big", clients=[bank, clinic], pools=[solo])
    ModelPinFactory(name="small", clients=[bank, clinic, lab], pools=[solo, shared])
    dedicated = NodeFactory(name="n-solo", pool=solo)
    first, second = NodeFactory(name="n-a", pool=shared), NodeFactory(name="n-b", pool=shared)

    alone = build_bundle(dedicated, 1)
    assert alone.pool is not None and (alone.pool.name, alone.pool.dedicated) == ("solo", True)
    assert [c.id for c in alone.clients] == ["bank"]
    assert [m.name for m in alone.models] == ["big", "small"]
    assert alone.clients[0].models == ("big", "small")
    # One node in its pool: it enforces the whole rate.
    assert alone.clients[0].limits.requests_per_minute == 100

    for node in (first, second):
        bundle = build_bundle(node, 1)
        assert bundle.pool is not None and not bundle.pool.dedicated
        assert [c.id for c in bundle.clients] == ["clinic", "lab"]
        assert [m.name for m in bundle.models] == ["small"]  # "big" is not on this pool
        by_id = {c.id: c for c in bundle.clients}
        assert by_id["clinic"].models == ("small",)
        # Two nodes share the pool's clients: each enforces half of their rates.
        assert by_id["clinic"].limits.requests_per_minute == 50


def test_a_dedicated_pool_serves_one_client(admin_api, pools):
    ClientFactory(slug="bank", pool=pools["solo"])

    second = admin_api.post(
        "/api/clients/", {"id": "other", "name": "Other", "pool": "solo"}, format="json"
    )
    assert second.status_code == 400 and "dedicated to client bank" in str(second.json()["pool"])
    placed = admin_api.post(
        "/api/clients/", {"id": "other", "name": "Other", "pool": "shared"}, format="json"
    )
    assert placed.status_code == 201 and placed.json()["pool"] == "shared"
    moved = admin_api.patch("/api/clients/other/", {"pool": "solo"}, format="json")
    assert moved.status_code == 400

    # A shared pool with two clients can't become dedicated either.
    ClientFactory(slug="third", pool=pools["shared"])
    shared_id = pools["shared"].pk
    turned = admin_api.patch(f"/api/node-pools/{shared_id}/", {"kind": "dedicated"}, format="json")
    assert turned.status_code == 400 and "kind" in turned.json()
    # And the node would refuse such a bundle if one were ever made.
    node = NodeFactory(pool=pools["shared"])
    NodePool.objects.filter(pk=shared_id).update(kind=PoolKind.DEDICATED)
    node.refresh_from_db()
    with pytest.raises(ContractError, match="dedicated"):
        ConfigBundle.model_validate(build_bundle(node, 1).document())


def test_clients_and_nodes_land_on_the_default_pool_unless_placed(admin_api):
    key = NodeFactory.build().public_key
    made = admin_api.post(
        "/api/nodes/",
        {"name": "n1", "management_url": "http://127.0.0.1:8001", "public_key": key},
        format="json",
    )
    client = admin_api.post("/api/clients/", {"id": "acme", "name": "Acme"}, format="json")

    assert made.status_code == 201 and made.json()["pool"] == DEFAULT_POOL
    assert made.json()["draining"] is False
    assert client.status_code == 201 and client.json()["pool"] == DEFAULT_POOL
    assert NodePool.objects.get(name=DEFAULT_POOL).kind == PoolKind.SHARED


def test_a_pin_goes_to_its_clients_pools_unless_placed_and_keeps_them_when_superseded(pools):
    bank = ClientFactory(slug="bank", pool=pools["solo"])
    clinic = ClientFactory(slug="clinic", pool=pools["shared"])
    path = str(model_file("placed-v1"))

    first = pin_model(name="llm", version="v1", path=path, clients=[bank, clinic])
    assert {p.name for p in first.pools.all()} == {"solo", "shared"}
    second = pin_model(name="llm", version="v2", path=path, supersede=True)
    assert {p.name for p in second.pools.all()} == {"solo", "shared"}
    only = pin_model(name="other", version="v1", path=path, pools=[pools["solo"]])
    assert [p.name for p in only.pools.all()] == ["solo"]
    nobody = pin_model(name="spare", version="v1", path=path)
    assert [p.name for p in nobody.pools.all()] == [DEFAULT_POOL]


def test_gateways_route_each_peer_to_its_clients_pool(pools):
    gw = make_gateway().gateway
    bank = ClientFactory(slug="bank", pool=pools["solo"])
    clinic = ClientFactory(slug="clinic", pool=pools["shared"])
    bank_peer = provision_peer(bank, gw).peer
    clinic_peer = provision_peer(clinic, gw).peer
    nodes = [
        NodeFactory(name="n-solo", pool=pools["solo"]),
        NodeFactory(name="n-a", pool=pools["shared"]),
        NodeFactory(name="n-b", pool=pools["shared"], draining=True),
    ]
    for n, node in enumerate(nodes, 5):
        GatewayUpstream.objects.create(gateway=gw, node=node, host=f"10.0.0.{n}", port=8000)

    config = build_gateway_config(gw, 1)

    peers = {p.id: p.pool for p in config.peers}
    assert peers == {bank_peer.config_id: "solo", clinic_peer.config_id: "shared"}
    assert [(u.node, u.pool, u.draining) for u in config.upstreams] == [
        ("n-a", "shared", False),
        ("n-b", "shared", True),
        ("n-solo", "solo", False),
    ]

    # Moving a client moves its peers' route in the next config.
    clinic.pool = pools["solo"]
    bank.pool = pools["shared"]
    bank.save()
    clinic.save()
    moved = {p.id: p.pool for p in build_gateway_config(gw, 2).peers}
    assert moved == {bank_peer.config_id: "shared", clinic_peer.config_id: "solo"}


def test_capacity_sums_the_serving_nodes_last_health(admin_api, pools):
    shared = pools["shared"]
    ClientFactory(slug="clinic", pool=shared)
    engines = [{"name": "llm", "slots": 8, "slots_busy": 6, "waiting": 3}]
    for name, status, draining in (
        ("n-a", HealthStatus.OK, False),
        ("n-b", HealthStatus.OK, False),
        ("n-c", HealthStatus.OK, True),  # draining: not counted as room for new sessions
        ("n-d", HealthStatus.UNREACHABLE, False),
    ):
        node = NodeFactory(name=name, pool=shared, draining=draining)
        NodeState.objects.create(
            node=node,
            health_status=status,
            health={"engines": engines, "sessions_open": 4},
        )

    listed = admin_api.get("/api/node-pools/?kind=shared").json()["results"]

    assert {p["kind"] for p in listed} == {"shared"}
    (pool,) = [p for p in listed if p["name"] == "shared"]
    assert pool["clients"] == ["clinic"]
    assert pool["nodes"] == ["n-a", "n-b", "n-c", "n-d"]
    capacity = pool["capacity"]
    assert capacity["serving_nodes"] == 2
    assert (capacity["slots"], capacity["slots_busy"], capacity["waiting"]) == (16, 12, 6)
    assert capacity["utilisation"] == 0.75
    assert capacity["sessions_open"] == 16  # every node's, the draining one's too
    assert {n["node"]: n["draining"] for n in capacity["nodes"]}["n-c"] is True


def test_a_pool_in_use_is_not_deleted(admin_api, pools):
    NodeFactory(pool=pools["shared"])

    assert admin_api.delete(f"/api/node-pools/{pools['shared'].pk}/").status_code == 409
    assert admin_api.delete(f"/api/node-pools/{pools['solo'].pk}/").status_code == 204


def test_the_admin_shows_who_shares_hardware_and_each_pools_capacity(admin_user, pools):
    browser = BrowserClient()
    browser.force_login(admin_user)
    bank = ClientFactory(slug="bank", pool=pools["solo"])
    clinic = ClientFactory(slug="clinic", pool=pools["shared"])
    ClientFactory(slug="lab", pool=pools["shared"])
    node = NodeFactory(name="n-a", pool=pools["shared"])
    NodeState.objects.create(
        node=node,
        health_status=HealthStatus.OK,
        health={"engines": [{"slots": 8, "slots_busy": 2, "waiting": 0}], "sessions_open": 3},
    )

    shared_page = browser.get(f"/admin/clients/client/{clinic.pk}/change/").content.decode()
    solo_page = browser.get(f"/admin/clients/client/{bank.pk}/change/").content.decode()
    pools_page = browser.get("/admin/fleet/nodepool/").content.decode()
    pool_page = browser.get(f"/admin/fleet/nodepool/{pools['shared'].pk}/change/")

    assert "Shares hardware with" in shared_page and ">lab<" in shared_page
    assert "its pool is dedicated to it" in solo_page
    assert "1 nodes, 2/8 slots busy (25% busy), 0 waiting, 3 open sessions" in pools_page
    assert "no node serving" in pools_page  # the dedicated pool has none yet
    assert pool_page.status_code == 200 and "n-a" in pool_page.content.decode()
    # A second client can't be placed on the dedicated pool from the console either.
    refused = browser.post(
        "/admin/clients/client/add/",
        {
            "slug": "other",
            "name": "Other",
            "pool": pools["solo"].pk,
            "max_sessions": 8,
            "max_tokens_per_request": 2048,
            "api_keys-TOTAL_FORMS": 0,
            "api_keys-INITIAL_FORMS": 0,
        },
    )
    assert refused.status_code == 200 and "dedicated to client bank" in refused.content.decode()


def test_knowledge_bases_follow_placement(pools):
    """Documents go to the client's pool only; moving or disabling the client forgets
    the copies on the nodes that no longer serve it (those nodes drop them)."""
    bank = ClientFactory(slug="bank", pool=pools["shared"])
    n1, n2 = (
        NodeFactory(name="n1", pool=pools["shared"]),
        NodeFactory(name="n2", pool=pools["solo"]),
    )
    assert serving_nodes(bank) == [n1]
    kb = KnowledgeBase.objects.create(client=bank, name="handbook")
    document = KnowledgeDocument.objects.create(
        knowledge_base=kb, name="a.md", bytes=1, sha256="0" * 64, loaded_at=timezone.now()
    )
    DocumentCopy.objects.create(document=document, node=n1, status=CopyStatus.LOADED)

    bank.pool = pools["solo"]
    save_client(bank)
    assert serving_nodes(bank) == [n2]
    assert not DocumentCopy.objects.exists()

    DocumentCopy.objects.create(document=document, node=n2, status=CopyStatus.LOADED)
    bank.is_active = False
    save_client(bank)
    assert not DocumentCopy.objects.exists()


def test_placements_wait_for_the_pools_lock_and_the_default_pool_keeps_its_name(admin_api):
    default = NodePool.objects.get(pk=default_pool_id())
    renamed = admin_api.patch(f"/api/node-pools/{default.pk}/", {"name": "x"}, format="json")
    assert renamed.status_code == 400 and "name" in renamed.json()

    # Made without a pool, a client lands on the default pool: a dedicated one takes
    # no second client that way either.
    NodePool.objects.filter(pk=default.pk).update(kind=PoolKind.DEDICATED)
    assert (
        admin_api.post("/api/clients/", {"id": "a", "name": "A"}, format="json").status_code == 201
    )
    second = admin_api.post("/api/clients/", {"id": "b", "name": "B"}, format="json")
    assert second.status_code == 400 and "dedicated to client a" in str(second.json())
