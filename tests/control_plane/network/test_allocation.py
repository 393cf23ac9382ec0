"""Tunnel address allocation: the pure function, a /30 drained to 409, and concurrent
provisioning that never hands one address out twice (real transactions, real threads)."""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter

import pytest
from django.db import connection

from control_plane.core.errors import Conflict
from control_plane.network.allocation import PoolExhausted, allocate, gateway_address
from control_plane.network.models import Peer
from control_plane.network.services import delete_peer, provision_peer
from tests.control_plane.factories import ClientFactory
from tests.control_plane.network.conftest import make_gateway


def test_network_broadcast_and_gateway_are_never_handed_out():
    net = ipaddress.ip_network("10.9.0.0/29")
    got = []
    for _ in range(5):
        got.append(allocate(net, got))
    assert [str(a) for a in got] == [f"10.9.0.{i}" for i in range(2, 7)]
    with pytest.raises(PoolExhausted) as err:
        allocate(net, got)
    assert err.value.network == net
    assert gateway_address(net) == ipaddress.ip_address("10.9.0.1")


def test_lowest_free_address_fills_holes_and_honours_reservations():
    net = ipaddress.ip_network("10.9.0.0/24")
    assert str(allocate(net, ["10.9.0.2", "10.9.0.4"])) == "10.9.0.3"
    assert str(allocate(net, ["10.9.0.2"], reserved=["10.9.0.3"])) == "10.9.0.4"
    # Addresses outside the network don't count against it.
    assert str(allocate(net, ["10.8.0.2"])) == "10.9.0.2"


def test_ipv6_pools_are_walked_without_enumerating_them():
    net = ipaddress.ip_network("fd77::/64")
    assert str(allocate(net, [])) == "fd77::2"
    used = [f"fd77::{i:x}" for i in range(2, 1000)]
    assert str(allocate(net, used)) == "fd77::3e8"
    tiny = ipaddress.ip_network("fd77::/126")  # ::0 anycast, ::1 gateway, ::2, ::3
    assert str(allocate(tiny, ["fd77::2"])) == "fd77::3"
    with pytest.raises(PoolExhausted):
        allocate(tiny, ["fd77::2", "fd77::3"])


@pytest.mark.django_db
def test_a_slash_30_is_drained_and_then_the_api_answers_409(admin_api):
    make_gateway("gw-tiny", ipv4="10.99.0.0/30", ipv6="")
    ClientFactory(slug="acme")
    body = {"client": "acme", "gateway": "gw-tiny"}

    first = admin_api.post("/api/peers/", body, format="json")
    second = admin_api.post("/api/peers/", body, format="json")

    assert first.status_code == 201, first.json()
    assert first.json()["address_v4"] == "10.99.0.2"  # .0 network, .1 gateway, .3 broadcast
    assert second.status_code == 409
    assert second.json()["code"] == "pool_exhausted"
    assert "10.99.0.0/30" in second.json()["detail"]
    assert Peer.objects.count() == 1

    # Deleting the peer gives its address back.
    assert admin_api.delete(f"/api/peers/{first.json()['id']}/").status_code == 204
    third = admin_api.post("/api/peers/", body, format="json")
    assert third.status_code == 201 and third.json()["address_v4"] == "10.99.0.2"


@pytest.mark.django_db(transaction=True)
def test_concurrent_provisioning_never_hands_out_an_address_twice():
    gateway = make_gateway("gw-busy", ipv4="10.98.0.0/28", ipv6="fd98::/125").gateway
    client = ClientFactory(slug="acme")
    # /28: 13 peer addresses for IPv4, but /125 holds only 6 for IPv6: that runs dry first.
    workers = 10
    start = threading.Barrier(workers)
    results: list[object] = []
    lock = threading.Lock()

    def provision() -> None:
        try:
            start.wait(timeout=30)
            outcome: object = provision_peer(client, gateway).peer.address_v4
        except Conflict as exc:
            outcome = exc.code
        except Exception as exc:  # anything else is a bug the test must show
            outcome = repr(exc)
        finally:
            connection.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=provision) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(results) == workers
    counts = Counter(type(r).__name__ if not isinstance(r, str) else r for r in results)
    addresses = [r for r in results if isinstance(r, str) and r.startswith("10.98.")]
    assert len(addresses) == 6, results  # exactly the IPv6 capacity
    assert counts["pool_exhausted"] == workers - 6, results
    peers = list(Peer.objects.filter(gateway=gateway))
    assert len(peers) == 6
    assert len({p.address_v4 for p in peers}) == 6
    assert len({p.address_v6 for p in peers}) == 6
    assert sorted(addresses) == sorted(p.address_v4 for p in peers)


@pytest.mark.django_db(transaction=True)
def test_concurrent_provisioning_and_deleting_keep_addresses_unique():
    gateway = make_gateway("gw-churn", ipv4="10.97.0.0/29", ipv6="").gateway
    client = ClientFactory(slug="acme")
    errors: list[str] = []

    def churn() -> None:
        try:
            for _ in range(4):
                try:
                    peer = provision_peer(client, gateway).peer
                except Conflict as exc:
                    assert exc.code == "pool_exhausted"
                    continue
                delete_peer(peer)
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=churn) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert Peer.objects.filter(gateway=gateway).count() == 0
