"""Node statements: what verifies, and each way a statement must fail (issue 17)."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import timedelta

import pytest

from shared.attestation import (
    StatementEntry,
    build_allowed_releases,
    build_statement_proof,
    make_statement,
    make_statement_entry,
    open_statement,
    sign_statement,
    verify_statement,
)
from shared.checkpoint import Checkpoint, sign_checkpoint
from shared.keys import b64url
from shared.merkle import InMemoryTree, leaf_hash
from shared.usage import UsageRecord, format_timestamp, sign_usage_record
from tests.shared.conftest import MODEL_SHA256, ORIGIN, T0, fixed_key

RELEASE = "ab" * 32
OTHER_RELEASE = "cd" * 32
NOW = T0 + timedelta(hours=1)


def nonce() -> str:
    return b64url(os.urandom(32))


def statement_for(node_id: str, key_seed: int, the_nonce: str, **changes: object):
    fields: dict = dict(
        node_id=node_id,
        nonce=the_nonce,
        release_digest=RELEASE,
        llama_cpp={"version": "0.3.36", "library_sha256": "11" * 32},
        models=[{"name": "smollm2", "version": "q4_1", "sha256": MODEL_SHA256}],
        config={"version": 7, "sha256": "22" * 32},
        engine_settings_sha256="33" * 32,
        signing_key=fixed_key(key_seed).public_key(),
        management_tls_sha256=None,
        issued_at=NOW,
    )
    fields.update(changes)
    return make_statement(**fields)


class World:
    """A log holding node-a's statement (and two unrelated leaves before it)."""

    def __init__(self) -> None:
        self.log_key = fixed_key(1)
        self.tree = InMemoryTree()
        for filler in (b"one", b"two"):
            self.tree.append(leaf_hash(filler))
        logged = statement_for("node-a", 2, nonce())
        self.entry = make_statement_entry(sign_statement(logged, fixed_key(2)), T0)
        self.index = self.tree.size
        self.tree.append(self.entry.leaf_hash())
        self.tree.append(leaf_hash(b"three"))

    def proof(self, entry: StatementEntry | None = None, index: int | None = None) -> bytes:
        index = self.index if index is None else index
        size = self.tree.size
        checkpoint = sign_checkpoint(Checkpoint(ORIGIN, size, self.tree.root(size)), self.log_key)
        return build_statement_proof(
            entry=entry or self.entry,
            index=index,
            checkpoint=checkpoint,
            inclusion_proof=self.tree.inclusion_proof(index, size),
            log_key=self.log_key.public_key(),
            log_key_name=ORIGIN,
        )

    def releases(self, *digests: str) -> bytes:
        return build_allowed_releases(
            [(d, "2026.12") for d in digests],
            generated_at=NOW,
            log_key=self.log_key,
            log_key_name=ORIGIN,
        )

    def receipt(self, **changes: object) -> str:
        fields: dict = dict(
            record_id=str(uuid.uuid4()),
            session_id="s1",
            client_id="acme",
            node_id="node-a",
            model="smollm2",
            model_version="q4_1",
            model_sha256=MODEL_SHA256,
            started_at=format_timestamp(NOW),
            ended_at=format_timestamp(NOW),
            ended_by="teardown",
            request_count=1,
            prompt_tokens=5,
            completion_tokens=5,
            config_version=7,
            release_digest=RELEASE,
            statement_index=self.index,
        )
        fields.update(changes)
        return sign_usage_record(UsageRecord(**fields), fixed_key(2))

    def check(self, token: str, the_nonce: str, **kwargs: object):
        kwargs.setdefault("proof", self.proof())
        kwargs.setdefault("releases", self.releases(RELEASE))
        kwargs.setdefault("log_key", self.log_key.public_key())
        return verify_statement(token, nonce=the_nonce, now=NOW, **kwargs)


@pytest.fixture
def world() -> World:
    return World()


def failures(report) -> str:
    return "\n".join(map(str, report.failures))


def test_a_fresh_statement_verifies_and_is_in_the_ledger(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    report = world.check(token, n, expect_models=[MODEL_SHA256], receipt=world.receipt())
    assert report.ok, failures(report)
    assert report.log_index == world.index
    assert any("logged at index 2" in p for p in report.passed)
    assert any("is allowed" in p for p in report.passed)
    assert any("names this logged statement" in p for p in report.passed)
    assert not report.warnings


def test_a_stale_nonce_fails(world: World) -> None:
    old = nonce()
    token = sign_statement(statement_for("node-a", 2, old), fixed_key(2))
    report = world.check(token, nonce())
    assert not report.ok and "nonce" in failures(report)


def test_an_old_statement_fails_freshness(world: World) -> None:
    n = nonce()
    token = sign_statement(
        statement_for("node-a", 2, n, issued_at=NOW - timedelta(hours=1)), fixed_key(2)
    )
    assert "freshness" in failures(world.check(token, n))


def test_another_nodes_key_fails(world: World) -> None:
    # node-b's key signs a statement that says it is node-a: it verifies under the key it
    # names, but that is not the key of node-a's logged statement.
    n = nonce()
    token = sign_statement(statement_for("node-a", 3, n), fixed_key(3))
    report = world.check(token, n)
    assert not report.ok
    assert "claims" in failures(report)
    # Without the proof nothing ties a key to a node: that alone fails.
    alone = verify_statement(token, nonce=n, now=NOW)
    assert not alone.ok and "anchor" in failures(alone)


def test_a_statement_signed_by_a_key_it_does_not_name_fails(world: World) -> None:
    n = nonce()
    good = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    forged = sign_statement(statement_for("node-a", 3, n), fixed_key(3))
    # node-a's statement with node-b's signature (and node-b's header, kid included).
    spliced = ".".join([forged.split(".")[0], good.split(".")[1], forged.split(".")[2]])
    assert "statement" in failures(world.check(spliced, n))


def test_a_release_not_allowed_fails(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    report = world.check(token, n, releases=world.releases(OTHER_RELEASE))
    assert not report.ok and "not one the control plane allows" in failures(report)


def test_a_release_list_not_signed_by_the_log_key_fails(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    forged = build_allowed_releases(
        [(RELEASE, "x")], generated_at=NOW, log_key=fixed_key(9), log_key_name=ORIGIN
    )
    assert "allowed releases" in failures(world.check(token, n, releases=forged))
    edited = json.loads(world.releases(OTHER_RELEASE))
    edited["releases"][0]["digest"] = RELEASE
    report = world.check(token, n, releases=json.dumps(edited).encode())
    assert "allowed releases" in failures(report)


def test_a_model_the_node_does_not_claim_fails(world: World) -> None:
    n = nonce()
    changed = "60" + MODEL_SHA256[2:]
    models = [{"name": "smollm2", "version": "q4_1", "sha256": changed}]
    token = sign_statement(statement_for("node-a", 2, n, models=models), fixed_key(2))
    report = world.check(token, n, expect_models=[MODEL_SHA256])
    assert "no model with sha256" in failures(report)
    assert "claims" in failures(report)  # and it is not what was logged


def test_claims_not_in_the_ledger_fail(world: World) -> None:
    n = nonce()
    token = sign_statement(
        statement_for("node-a", 2, n, config={"version": 8, "sha256": "44" * 32}), fixed_key(2)
    )
    assert "claims" in failures(world.check(token, n))


def test_a_proof_that_does_not_lead_to_the_tree_head_fails(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    document = json.loads(world.proof())
    document["index"] = 1
    assert "inclusion" in failures(world.check(token, n, proof=json.dumps(document).encode()))
    document = json.loads(world.proof())
    proof_hash = bytearray(base64.b64decode(document["inclusion_proof"][0]))
    proof_hash[0] ^= 1
    document["inclusion_proof"][0] = base64.b64encode(bytes(proof_hash)).decode()
    assert "inclusion" in failures(world.check(token, n, proof=json.dumps(document).encode()))


def test_a_proof_under_another_log_key_fails(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    report = world.check(token, n, log_key=fixed_key(9).public_key())
    assert "pinned" in failures(report)


def test_a_receipt_of_another_release_or_config_fails(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    for change in (
        {"release_digest": OTHER_RELEASE},
        {"config_version": 8},
        {"statement_index": 0},
        {"model_sha256": "77" * 32},
    ):
        report = world.check(token, n, receipt=world.receipt(**change))
        assert "receipt" in failures(report), change


def test_one_changed_byte_of_the_statement_fails(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[raw.index(b"q4_1")] ^= 1
    changed = ".".join([header, b64url(bytes(raw)), signature])
    assert "statement" in failures(world.check(changed, n))


def test_a_bad_nonce_is_refused_when_making_a_statement() -> None:
    for bad in ("", "short", b64url(b"x" * 15), b64url(b"x" * 65), "AAAA=", "A" * 21, "a+b/" * 6):
        with pytest.raises(ValueError):
            statement_for("node-a", 2, bad)


def test_the_statement_round_trips(world: World) -> None:
    n = nonce()
    statement = statement_for("node-a", 2, n)
    opened = open_statement(sign_statement(statement, fixed_key(2)))
    assert opened == statement
    assert opened.claims_sha256() == world.entry.statement.claims_sha256()


def test_an_older_receipt_is_checked_against_its_logged_statement(world: World) -> None:
    # The node's config was renewed since the receipt: the fresh statement's claims are not
    # those logged at the receipt's index (said so), but the receipt holds against them.
    n = nonce()
    renewed = statement_for("node-a", 2, n, config={"version": 8, "sha256": "44" * 32})
    report = world.check(sign_statement(renewed, fixed_key(2)), n, receipt=world.receipt())
    assert [f.check for f in report.failures] == ["logged statement"]
    assert any("names this logged statement" in p for p in report.passed)
    report = world.check(
        sign_statement(renewed, fixed_key(2)), n, receipt=world.receipt(config_version=8)
    )
    assert "its config version is not the statement's" in failures(report)


def test_a_receipt_signed_before_its_statement_was_logged_is_a_note(world: World) -> None:
    n = nonce()
    token = sign_statement(statement_for("node-a", 2, n), fixed_key(2))
    report = world.check(token, n, receipt=world.receipt(statement_index=None))
    assert report.ok, failures(report)
    assert any("signed before" in w for w in report.warnings)
