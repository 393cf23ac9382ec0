"""Rollout through the real machinery: gunicorn, redis-server, a Celery worker and beat.

The nodes here are the contract-following fakes (threads in this process); the
end-to-end tests in ``test_e2e_rollout`` use real data-plane processes.
"""

from __future__ import annotations

import pytest

from shared.trust import load_key_set
from tests.conftest import wait_until
from tests.control_plane.fakes import FakeNode

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def test_a_worker_pushes_and_beat_catches_a_returning_node_up(redis_server, control_plane_factory):
    cp = control_plane_factory(
        redis_server.url,
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="1",
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="1",
        # The operator's own rollout is what this test follows (test_e2e_trust.py covers
        # changes that release themselves).
        SANCTUM_CP_ROLLOUT__ON_CHANGE="false",
    )
    cp.manage("migrate", "-v0")
    token = cp.manage("create_operator", "ops", "--role", "admin", "--token")["SANCTUM_API_TOKEN"]
    trusted = load_key_set(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])
    steady = FakeNode("steady", trusted).start()
    flaky = FakeNode("flaky", trusted).start()
    flaky.stop()  # down from the start; it keeps its port for when it comes back
    cp.serve()
    cp.worker()
    cp.beat()

    try:
        with cp.api(token) as api:
            assert api.post("/clients/", json={"id": "acme", "name": "Acme"}).status_code == 201
            node_ids = {}
            for fake in (steady, flaky):
                created = api.post(
                    "/nodes/",
                    json={
                        "name": fake.name,
                        "management_url": fake.url,
                        "public_key": fake.node_public_pem,  # its health answers' signer
                    },
                )
                assert created.status_code == 201, created.text
                node_ids[fake.name] = created.json()["id"]

            released = api.post("/releases/", json={})
            assert released.status_code == 202

            def node(name: str) -> dict:
                return api.get(f"/nodes/{node_ids[name]}/").json()

            assert wait_until(lambda: node("steady")["rollout"] == "in_sync", timeout=60)
            failed = wait_until(
                lambda: (n := node("flaky"))["latest_release"]["last_error"] and n, timeout=60
            )
            assert failed["rollout"] in ("failed", "out_of_date")
            assert "node unreachable" in failed["latest_release"]["last_error"]
            # Only version 1 ever reaches it. Beat's health poll may catch the node up
            # while the queued push is in flight, so version 1 can arrive twice: the
            # node refuses the second copy as a replay (409 with the same version),
            # which the control plane counts as applied.
            assert set(steady.received) == {1}

            flaky.start()  # back on the same port, holding nothing

            caught_up = wait_until(lambda: node("flaky")["rollout"] == "in_sync", timeout=60)
            assert caught_up, node("flaky")
            assert flaky.held_version == 1
            # The retried push can land before beat's next health poll, and a poll that
            # began while the node was still down records "unreachable" when it ends.
            # Health is what the poll last saw, so the next poll (1 s) must read "ok".
            healthy = wait_until(
                lambda: node("flaky")["state"]["health_status"] == "ok", timeout=30
            )
            assert healthy, node("flaky")
    finally:
        steady.stop()
        flaky.stop()
