"""Node statements through the control plane: logged once per claims, served to auditors
as proof files, checked with the allowed releases (shared.attestation)."""

from __future__ import annotations

import json
import os

import pytest

from control_plane.audit.models import Statement, TreeHead
from control_plane.audit.services import collect_node
from control_plane.registry.models import SoftwareRelease
from control_plane.registry.services import allow_release, disallow_release, record_release
from shared.attestation import verify_statement
from shared.keys import b64url, generate_private_key

pytestmark = pytest.mark.django_db

FAKE_RELEASE = "ab" * 32  # what the fake node states
FAKE_MODEL = "ef" * 32


def fresh(fake, nonce: str | None = None) -> tuple[str, str]:
    nonce = nonce or b64url(os.urandom(32))
    return fake.statement(nonce), nonce


def test_a_statement_is_logged_once_per_claims_and_verifies(
    usage_node, auditor_api, log_public_key
):
    fake, node = usage_node
    fake.statements = True
    fake.add_usage("acme")
    first = collect_node(node)
    assert first.statement_error == "" and first.statement_index == 0
    again = collect_node(node)  # the same claims: not logged again
    assert again.statement_index == 0 and Statement.objects.count() == 1
    fake.config_version = 2  # a new config: new claims
    assert collect_node(node).statement_index == 2
    assert list(Statement.objects.values_list("log_index", "config_version")) == [(0, 1), (2, 2)]
    assert fake.placed_statements[-1]["placement"]["log_index"] == 2

    listed = auditor_api.get("/api/audit/statements/", {"node": node.name})
    assert listed.status_code == 200
    rows = listed.json()
    rows = rows.get("results", rows) if isinstance(rows, dict) else rows
    assert [r["log_index"] for r in rows] == [0, 2]
    assert rows[1]["release_digest"] == FAKE_RELEASE
    proof = auditor_api.get("/api/audit/statements/2/proof/")
    assert proof.status_code == 200
    assert auditor_api.get("/api/audit/statements/1/proof/").status_code == 404  # a receipt

    allow_release(record_release(digest=FAKE_RELEASE, name="2026.12"))
    releases = auditor_api.get("/api/audit/releases/")
    assert releases.status_code == 200

    token, nonce = fresh(fake)
    report = verify_statement(
        token,
        nonce=nonce,
        proof=proof.content,
        releases=releases.content,
        log_key=log_public_key,
        expect_models=[FAKE_MODEL],
    )
    assert report.ok, [str(f) for f in report.failures]
    assert report.log_index == 2

    # The older claims' proof is not this statement's; a stale nonce fails.
    old = auditor_api.get("/api/audit/statements/0/proof/").content
    report = verify_statement(token, nonce=nonce, proof=old, log_key=log_public_key)
    assert "claims" in "\n".join(map(str, report.failures))
    report = verify_statement(token, nonce=fresh(fake)[1], proof=proof.content)
    assert "nonce" in "\n".join(map(str, report.failures))

    # A release the control plane stops allowing fails the check from then on.
    disallow_release(_release(FAKE_RELEASE))
    now_releases = auditor_api.get("/api/audit/releases/").content
    assert json.loads(now_releases)["releases"] == []
    report = verify_statement(token, nonce=nonce, releases=now_releases, log_key=log_public_key)
    assert "not one the control plane allows" in "\n".join(map(str, report.failures))


def _release(digest: str) -> SoftwareRelease:
    return SoftwareRelease.objects.get(digest=digest)


def test_a_statement_not_signed_by_the_registered_key_is_not_logged(usage_node):
    fake, node = usage_node
    fake.statements = True
    fake.node_key = generate_private_key()  # no longer the key registered for the node
    outcome = collect_node(node)
    assert "not signed by the key registered" in outcome.statement_error
    assert Statement.objects.count() == 0
    assert TreeHead.objects.filter(size__gt=0).count() == 0


def test_auditors_only(usage_node, anon_api, admin_api):
    fake, node = usage_node
    fake.statements = True
    collect_node(node)
    assert anon_api.get("/api/audit/statements/").status_code == 401
    assert anon_api.get("/api/audit/releases/").status_code == 401
    assert admin_api.get("/api/audit/statements/0/proof/").status_code == 200
