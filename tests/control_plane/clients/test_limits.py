"""A client's rates, quotas and engine caps: set by admins, shared out among the nodes,
visible with the tokens used, recorded in the change trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.audit.services import collect_node
from control_plane.changes.models import ObjectChange
from control_plane.clients.models import Client
from control_plane.fleet.rollout import build_bundle
from tests.control_plane.factories import ClientFactory, NodeFactory

pytestmark = pytest.mark.django_db


def test_shares_add_up_to_the_clients_own_limits():
    client = Client(slug="c", requests_per_minute=10, tokens_per_minute=None, tokens_per_day=7)
    shares = client.limit_shares(3)
    assert [s["requests_per_minute"] for s in shares] == [4, 3, 3]
    assert [s["tokens_per_day"] for s in shares] == [3, 2, 2]
    assert all(s["tokens_per_minute"] is None for s in shares)
    # fewer units than nodes: each node may still serve one
    assert [s["requests_per_minute"] for s in Client(requests_per_minute=1).limit_shares(2)] == [
        1,
        1,
    ]


def test_each_enabled_node_gets_its_share_and_the_clients_own_caps():
    ClientFactory(
        slug="acme",
        requests_per_minute=5,
        tokens_per_minute=1000,
        tokens_per_day=20_001,
        tokens_per_month=None,
        max_running_generations=2,
        max_queued_generations=0,
        max_parked_kv_mib=64,
    )
    ClientFactory(slug="plain")
    nodes = [NodeFactory(name=n) for n in ("n1", "n2")]
    NodeFactory(name="n3", enabled=False)

    limits = {}
    for node in nodes:
        bundle = build_bundle(node, 1)
        limits[node.name] = {c.id: c.limits for c in bundle.clients}

    a1, a2 = limits["n1"]["acme"], limits["n2"]["acme"]
    assert (a1.requests_per_minute, a2.requests_per_minute) == (3, 2)
    assert (a1.tokens_per_minute, a2.tokens_per_minute) == (500, 500)
    assert (a1.tokens_per_day, a2.tokens_per_day) == (10_001, 10_000)
    assert a1.tokens_per_month is None
    assert (a1.max_running, a1.max_queued, a1.max_parked_bytes) == (2, 0, 64 << 20)
    plain = limits["n1"]["plain"]
    assert plain.requests_per_minute is None and plain.max_running is None


def test_an_admin_sets_limits_through_the_api_and_the_trail_records_them(admin_api):
    ClientFactory(slug="acme")

    response = admin_api.patch(
        "/api/clients/acme/",
        {"requests_per_minute": 60, "tokens_per_day": 100_000, "max_running_generations": 4},
        format="json",
    )
    bad = admin_api.patch(
        "/api/clients/acme/",
        {
            "requests_per_minute": 0,
            "max_running_generations": 0,
            "tokens_per_month": -1,
            "tokens_per_day": 10**15 + 1,  # past what the config contract carries
        },
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert response.json()["requests_per_minute"] == 60
    assert bad.status_code == 400
    assert set(bad.json()) == {
        "requests_per_minute",
        "max_running_generations",
        "tokens_per_month",
        "tokens_per_day",
    }
    client = Client.objects.get(slug="acme")
    assert (client.requests_per_minute, client.tokens_per_day) == (60, 100_000)
    change = ObjectChange.objects.filter(object_repr="acme").order_by("-pk").first()
    assert change is not None
    assert change.diff()["requests_per_minute"] == (None, 60)
    assert change.diff()["max_running_generations"] == (None, 4)


def test_usage_shows_the_tokens_of_the_receipts_against_the_quotas(
    fake_node_factory, auditor_api, anon_api
):
    fake, node = fake_node_factory("n1")
    ClientFactory(slug="acme", tokens_per_day=1000, tokens_per_month=None, requests_per_minute=9)
    now = datetime.now(UTC)
    for moment in (now, now):
        fake.add_usage("acme", ended_at=moment, prompt_tokens=30, completion_tokens=12)
    fake.add_usage("acme", ended_at=now - timedelta(days=40), prompt_tokens=500)  # long ago
    assert collect_node(node).appended == 3

    assert anon_api.get("/api/clients/acme/usage/").status_code == 401
    response = auditor_api.get("/api/clients/acme/usage/")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["client"], body["requests_per_minute"], body["nodes"]) == ("acme", 9, 1)
    day, month = body["quotas"]
    assert day["period"] == "day" and month["period"] == "month"
    assert day["tokens"] == month["tokens"] == 2 * (30 + 12)
    assert day["quota"] == 1000 and day["remaining"] == 1000 - day["tokens"]
    assert month["quota"] is None and month["remaining"] is None
