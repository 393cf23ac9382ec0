"""The control plane's /metrics: a bearer token, and series read from the database."""

from __future__ import annotations

import secrets

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from control_plane.audit.services import collect_node
from control_plane.core import metrics
from control_plane.core.rollout import check_health, roll_out
from control_plane.fleet.rollout import NODES
from tests.control_plane.factories import NodeFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(tmp_path, settings):
    value = secrets.token_urlsafe(32)
    path = tmp_path / "metrics.token"
    path.write_text(value)
    path.chmod(0o600)
    settings.SANCTUM_METRICS_TOKEN_FILE = path
    metrics._token_digest.cache_clear()
    yield value
    metrics._token_digest.cache_clear()


def scrape(token: str) -> dict[tuple[str, tuple], float]:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def test_no_token_file_no_metrics(settings):
    settings.SANCTUM_METRICS_TOKEN_FILE = None
    metrics._token_digest.cache_clear()
    assert Client().get("/metrics").status_code == 404


def test_a_scrape_needs_the_token(token):
    assert Client().get("/metrics").status_code == 401
    wrong = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer " + "x" * 43)
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 405


def test_rollout_health_and_the_ledger_after_a_collection(token, fake_node_factory, on_commit):
    fake, node = fake_node_factory("node-a")
    NodeFactory(name="node-b")  # never released to, never polled
    with on_commit():
        roll_out(NODES, [node])
    check_health(NODES, node)
    fake.add_usage("acme")
    fake.add_usage("acme")
    collect_node(node)

    found = scrape(token)
    assert (
        found[
            (
                "sanctum_cp_rollout_state",
                (("kind", "node"), ("state", "in_sync"), ("target", "node-a")),
            )
        ]
        == 1
    )
    assert (
        found[
            (
                "sanctum_cp_rollout_state",
                (("kind", "node"), ("state", "no_release"), ("target", "node-b")),
            )
        ]
        == 1
    )
    assert found[("sanctum_cp_target_healthy", (("kind", "node"), ("target", "node-a")))] == 1
    assert found[("sanctum_cp_target_healthy", (("kind", "node"), ("target", "node-b")))] == 0
    assert found[("sanctum_cp_ledger_receipts", ())] == 2
    assert found[("sanctum_cp_ledger_tree_size", ())] == 2
    assert ("sanctum_cp_ledger_tree_head_timestamp_seconds", ()) in found
    assert found[("sanctum_cp_collection_records", (("node", "node-a"),))] == 2
    assert found[("sanctum_cp_collection_failing", (("node", "node-a"),))] == 0
    assert ("sanctum_cp_collection_last_success_timestamp_seconds", (("node", "node-a"),)) in found


def test_failed_sign_ins_and_lockouts_are_counted_never_named(token, settings):
    from control_plane.accounts.choices import Role
    from control_plane.accounts.services import create_operator

    create_operator("mallory-target", Role.ADMIN)
    browser = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        browser.post("/admin/login/", {"username": "mallory-target", "password": "wrong"})

    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    text = response.content.decode()
    found = scrape(token)
    assert found[("sanctum_cp_login_failures", ())] == settings.AXES_FAILURE_LIMIT
    assert found[("sanctum_cp_lockouts", ())] == 1
    assert "mallory-target" not in text and "203.0.113.9" not in text
