"""The auditors' API: receipts by client and period, bundles that verify offline, tree
heads and consistency proofs between two of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.audit.models import Receipt, TreeHead
from control_plane.audit.services import collect_node
from control_plane.clients.models import Client
from shared.checkpoint import open_checkpoint, verifier_key
from shared.cli.main import main as sanctum
from shared.keys import public_pem
from shared.ledger import verify_bundle, verify_consistency_files, verify_held_receipt
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(usage_node):
    """acme: two sessions on 1 March, one on 2 March; globex: one on 1 March."""
    fake, node = usage_node
    for slug in ("acme", "globex", "initech"):
        ClientFactory(slug=slug)
    held = {}
    for client, moment in (
        ("acme", T0),
        ("globex", T0 + timedelta(minutes=5)),
        ("acme", T0 + timedelta(hours=1)),
        ("acme", T0 + timedelta(days=1)),
    ):
        record, token = fake.add_usage(client, ended_at=moment)
        held[record.record_id] = token
    assert collect_node(node).appended == 4
    return fake, node, held


def test_auditors_list_receipts_by_client_and_period(ledger, auditor_api):
    day_one = auditor_api.get("/api/audit/receipts/?client=acme&since=2025-03-01&until=2025-03-02")
    everything = auditor_api.get("/api/audit/receipts/?client=acme")
    afternoon = auditor_api.get(
        "/api/audit/receipts/?client=acme&since=2025-03-01T12:30:00Z&until=2025-03-01T14:00:00%2B01:00"
    )

    assert day_one.status_code == 200
    assert [r["ended_at"] for r in day_one.json()["results"]] == [
        "2025-03-01T12:00:00Z",
        "2025-03-01T13:00:00Z",
    ]
    assert everything.json()["count"] == 3
    assert {r["client"] for r in everything.json()["results"]} == {"acme"}
    assert afternoon.json()["count"] == 0  # 14:00+01:00 is 13:00Z: until is exclusive
    one = everything.json()["results"][0]
    assert set(one) >= {"record_id", "session_id", "log_index", "leaf_hash", "node_jws"}
    assert "content" not in str(one) and "messages" not in one
    detail = auditor_api.get(f"/api/audit/receipts/{one['record_id']}/")
    assert detail.status_code == 200 and detail.json() == one


def test_bad_periods_and_unknown_clients_get_clear_errors(ledger, auditor_api):
    unknown = auditor_api.get("/api/audit/receipts/?client=nobody")
    bad_time = auditor_api.get("/api/audit/receipts/?client=acme&since=yesterday")
    backwards = auditor_api.get(
        "/api/audit/receipts/?client=acme&since=2025-03-02&until=2025-03-01"
    )
    no_client = auditor_api.get("/api/audit/bundle/")
    bundle_unknown = auditor_api.get("/api/audit/bundle/?client=nobody")
    bundle_backwards = auditor_api.get(
        "/api/audit/bundle/?client=acme&since=2025-03-02&until=2025-03-02"
    )
    bundle_bad = auditor_api.get("/api/audit/bundle/?client=acme&until=March")
    no_receipt = auditor_api.get("/api/audit/receipts/00000000-0000-4000-8000-000000000000/")

    assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
    assert bad_time.status_code == 400 and "since" in bad_time.json()
    assert backwards.status_code == 400 and "before it starts" in str(backwards.json())
    assert no_client.status_code == 400 and "client" in no_client.json()
    assert bundle_unknown.status_code == 404
    assert bundle_backwards.status_code == 400 and "until" in bundle_backwards.json()
    assert bundle_bad.status_code == 400 and "until" in bundle_bad.json()
    assert no_receipt.status_code == 404


def test_a_downloaded_bundle_verifies_with_the_log_key_pinned(ledger, auditor_api, log_public_key):
    _, _, held = ledger
    response = auditor_api.get(
        "/api/audit/bundle/?client=acme&since=2025-03-01&until=2025-03-02",
        HTTP_ACCEPT="text/html",  # whatever the client asks for, the bytes are the file
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    data = response.content
    report = verify_bundle(data, log_key=log_public_key, log_key_name="sanctum.invalid/receipts")
    assert report.ok, [str(f) for f in report.failures]
    assert (report.client_id, report.receipt_count, report.tree_size) == ("acme", 2, 4)
    assert report.since == "2025-03-01T00:00:00.000Z" and report.until == "2025-03-02T00:00:00.000Z"
    # a client's held copy is found in it; one of another period is signed evidence it isn't
    day_one = [jws for rid, jws in held.items() if rid in data.decode()]
    assert len(day_one) == 2
    assert verify_held_receipt(day_one[0], data, log_key=log_public_key).ok
    later = Receipt.objects.get(ended_at=T0 + timedelta(days=1)).node_jws
    outside = verify_held_receipt(later, data, log_key=log_public_key)
    assert not outside.ok and "outside the bundle's period" in str(outside.failures[-1])


def test_one_changed_byte_anywhere_in_a_downloaded_bundle_fails(
    ledger, auditor_api, log_public_key
):
    data = auditor_api.get("/api/audit/bundle/?client=acme").content
    assert verify_bundle(data, log_key=log_public_key).ok

    for position in range(0, len(data), max(1, len(data) // 40)):
        changed = bytearray(data)
        changed[position] = ord("A") if data[position] != ord("A") else ord("B")
        assert not verify_bundle(bytes(changed), log_key=log_public_key, fail_fast=True).ok, (
            position
        )


def test_sanctum_verify_accepts_a_downloaded_bundle_and_refuses_another_key(
    ledger, auditor_api, log_public_key, tmp_path: Path, capsys
):
    bundle = tmp_path / "acme.json"
    bundle.write_bytes(auditor_api.get("/api/audit/bundle/?client=acme").content)
    pem = tmp_path / "log.pub"
    pem.write_bytes(public_pem(log_public_key))
    vkey = tmp_path / "log.vkey"
    vkey.write_text(auditor_api.get("/api/audit/log-key/").json()["verifier_key"])
    other = tmp_path / "other.pub"
    from shared.keys import generate_private_key

    other.write_bytes(public_pem(generate_private_key().public_key()))

    assert sanctum(["verify", "--log-key", str(pem), str(bundle)]) == 0
    assert sanctum(["verify", "--log-key", str(vkey), str(bundle)]) == 0
    assert "OK: " in capsys.readouterr().out
    assert sanctum(["verify", "--log-key", str(other), str(bundle)]) == 1
    assert "is not the pinned key" in capsys.readouterr().err


def test_a_client_without_receipts_in_the_period_gets_a_signed_empty_bundle(
    ledger, auditor_api, log_public_key
):
    response = auditor_api.get("/api/audit/bundle/?client=initech")
    report = verify_bundle(response.content, log_key=log_public_key)
    assert response.status_code == 200 and report.ok and report.receipt_count == 0
    # a deleted client's receipts stay downloadable
    Client.objects.filter(slug="globex").delete()
    gone = auditor_api.get("/api/audit/bundle/?client=globex")
    assert gone.status_code == 200
    assert verify_bundle(gone.content, log_key=log_public_key).receipt_count == 1


def test_consistency_between_two_downloads_verifies(ledger, auditor_api, log_public_key, tmp_path):
    fake, node, _ = ledger
    old = auditor_api.get("/api/audit/bundle/?client=acme").content  # tree size 4
    saved_head = auditor_api.get("/api/audit/checkpoint/").content
    for _ in range(5):
        fake.add_usage("acme")
    collect_node(node)

    latest = auditor_api.get("/api/audit/tree-heads/latest/").json()
    new = auditor_api.get("/api/audit/consistency/?old=4").content
    pinned = {"log_key": log_public_key}

    assert latest["size"] == 9
    assert open_checkpoint(latest["checkpoint"], log_public_key).size == 9
    assert verify_consistency_files(old, new, **pinned).ok
    assert verify_consistency_files(saved_head, new, **pinned).ok
    # between two past tree heads, and refused against a head of the wrong size
    assert verify_consistency_files(
        saved_head, auditor_api.get("/api/audit/consistency/?old=4&new=9").content, **pinned
    ).ok
    wrong = verify_consistency_files(
        saved_head, auditor_api.get("/api/audit/consistency/?old=3").content, **pinned
    )
    assert not wrong.ok
    # the CLI, on files an auditor saved
    (tmp_path / "old.json").write_bytes(old)
    (tmp_path / "new.json").write_bytes(new)
    (tmp_path / "log.vkey").write_text(verifier_key("sanctum.invalid/receipts", log_public_key))
    args = ["verify", "--log-key", str(tmp_path / "log.vkey"), "--consistency"]
    assert sanctum([*args, str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 0


def test_consistency_and_checkpoint_requests_that_cant_be_answered(ledger, auditor_api):
    sizes = list(TreeHead.objects.values_list("size", flat=True))
    assert auditor_api.get("/api/audit/consistency/?old=5").status_code == 400  # above latest
    assert auditor_api.get("/api/audit/consistency/?old=3&new=2").status_code == 400
    assert auditor_api.get("/api/audit/consistency/?old=1&new=3").status_code == 404
    assert auditor_api.get("/api/audit/consistency/?old=-1").status_code == 400
    assert auditor_api.get("/api/audit/consistency/").status_code == 400
    assert auditor_api.get("/api/audit/checkpoint/?size=3").status_code == 404
    assert auditor_api.get(f"/api/audit/checkpoint/?size={sizes[0]}").status_code == 200
    assert auditor_api.get("/api/audit/tree-heads/3/").status_code == 404


def test_an_empty_ledger_has_a_signed_tree_head_of_size_zero(auditor_api, log_public_key):
    ClientFactory(slug="acme")
    head = auditor_api.get("/api/audit/tree-heads/latest/")
    bundle = auditor_api.get("/api/audit/bundle/?client=acme")

    assert head.status_code == 200 and head.json()["size"] == 0
    assert verify_bundle(bundle.content, log_key=log_public_key).tree_size == 0


def test_reading_needs_the_auditor_or_admin_role(ledger, admin_api, anon_api, db):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from control_plane.accounts.services import issue_api_token

    nobody = get_user_model().objects.create_user("nobody", password="pw")
    plain = APIClient()
    plain.credentials(HTTP_AUTHORIZATION=f"Token {issue_api_token(nobody)}")
    paths = [
        "/api/audit/receipts/?client=acme",
        "/api/audit/bundle/?client=acme",
        "/api/audit/tree-heads/",
        "/api/audit/tree-heads/latest/",
        "/api/audit/consistency/?old=1",
        "/api/audit/checkpoint/",
        "/api/audit/log-key/",
    ]
    for path in paths:
        assert admin_api.get(path).status_code == 200, path
        assert anon_api.get(path).status_code == 401, path
        assert plain.get(path).status_code == 403, path


def test_the_openapi_schema_lists_the_audit_api(admin_api):
    paths = admin_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()[
        "paths"
    ]
    for path in ("/api/audit/receipts/", "/api/audit/bundle/", "/api/audit/consistency/"):
        assert path in paths
