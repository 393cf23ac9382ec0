"""The audit bundle and consistency file: what verifies, and every way they must not."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from shared.canonical import canonical_json
from shared.checkpoint import Checkpoint, sign_checkpoint
from shared.keys import key_id
from shared.ledger import (
    LedgerError,
    ReceiptProof,
    build_bundle,
    verify_bundle,
    verify_consistency_files,
    verify_held_receipt,
)
from shared.usage import sign_usage_record
from tests.shared.conftest import ORIGIN, T0, SampleLedger, fixed_key, make_record

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64URL = B64[:-2] + "-_"


def edit(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Change the bundle's content and write it back in canonical form (no re-signing)."""
    obj = json.loads(data)
    change(obj)
    return canonical_json(obj) + b"\n"


def messages(report: Any) -> list[str]:
    return [str(f) for f in report.failures]


def assert_fails_with(report: Any, *expected: str) -> None:
    assert not report.ok
    text = "\n".join(messages(report))
    for part in expected:
        assert part in text, f"{part!r} not in:\n{text}"


# --- the good case ----------------------------------------------------------------------


def test_a_good_bundle_verifies(ledger: SampleLedger) -> None:
    report = verify_bundle(ledger.bundle("acme"))
    assert report.ok, messages(report)
    assert (report.client_id, report.origin, report.tree_size) == ("acme", ORIGIN, 5)
    assert report.receipt_count == 3
    assert "node signatures: 3 of 3" in report.passed
    assert "inclusion proofs against the checkpoint: 3 of 3" in report.passed
    assert not report.log_key_pinned
    assert report.warnings and "--log-key" in report.warnings[0]


def test_a_pinned_log_key_verifies_without_a_warning(ledger: SampleLedger) -> None:
    report = verify_bundle(
        ledger.bundle("acme"), log_key=ledger.log_key.public_key(), log_key_name=ORIGIN
    )
    assert report.ok and report.log_key_pinned and not report.warnings
    assert report.log_key_id == key_id(ledger.log_key.public_key())


def test_a_client_without_receipts_gets_a_verifiable_empty_bundle(ledger: SampleLedger) -> None:
    report = verify_bundle(ledger.bundle("initech"), log_key=ledger.log_key.public_key())
    assert report.ok and report.receipt_count == 0 and report.tree_size == 5


def test_the_file_is_canonical_json_and_one_newline(ledger: SampleLedger) -> None:
    data = ledger.bundle("acme")
    assert data.endswith(b"}\n") and data.count(b"\n") == 1
    assert canonical_json(json.loads(data)) + b"\n" == data


# --- any byte ---------------------------------------------------------------------------


@pytest.fixture
def small_bundle() -> bytes:
    """Two receipts of acme in a log of three: small enough to change every byte."""
    log = SampleLedger()
    log.add("acme", "node-a")
    log.add("globex", "node-b")
    log.add("acme", "node-b")
    return log.bundle("acme")


def test_changing_any_single_byte_fails(small_bundle: bytes) -> None:
    assert verify_bundle(small_bundle).ok
    passed = []
    for pos in range(len(small_bundle)):
        changed = bytearray(small_bundle)
        changed[pos] ^= 0x01
        # fail_fast gives the same verdict and skips signature checks once one failed.
        if verify_bundle(bytes(changed), fail_fast=True).ok:
            passed.append(pos)
    assert passed == [], [small_bundle[p - 20 : p + 20] for p in passed[:5]]


def test_the_full_report_agrees_with_fail_fast(small_bundle: bytes) -> None:
    for pos in range(0, len(small_bundle), 97):
        changed = bytearray(small_bundle)
        changed[pos] = (changed[pos] + 7) % 256
        full = verify_bundle(bytes(changed))
        assert not full.ok and full.failures
        assert not verify_bundle(bytes(changed), fail_fast=True).ok


def _flip_unused_bits(text: str, alphabet: str, padded: bool) -> str:
    """Same bytes to a lax decoder: change only the unused low bits of the last char."""
    body = text.rstrip("=") if padded else text
    pad = text[len(body) :]
    last = alphabet.index(body[-1])
    return body[:-1] + alphabet[last ^ 1] + pad


@pytest.mark.parametrize(
    ("where", "change"),
    [
        (
            "inclusion proof",
            lambda b: b["receipts"][0]["inclusion_proof"].__setitem__(
                0, _flip_unused_bits(b["receipts"][0]["inclusion_proof"][0], B64, True)
            ),
        ),
        (
            "bundle format",  # the manifest's leaf hash
            lambda b: b["manifest"]["receipts"][0].__setitem__(
                "leaf_hash", _flip_unused_bits(b["manifest"]["receipts"][0]["leaf_hash"], B64, True)
            ),
        ),
        (
            "bundle format",  # the log key's JWK
            lambda b: b["log_key"]["jwk"].__setitem__(
                "x", _flip_unused_bits(b["log_key"]["jwk"]["x"], B64URL, False)
            ),
        ),
        (
            "manifest signature",
            lambda b: b.__setitem__(
                "manifest_signature", _flip_unused_bits(b["manifest_signature"], B64URL, False)
            ),
        ),
        (
            "leaf hash",  # the node's JWS signature part changes the entry, so its leaf
            lambda b: b["receipts"][0]["entry"].__setitem__(
                "node_jws", _flip_unused_bits(b["receipts"][0]["entry"]["node_jws"], B64URL, False)
            ),
        ),
        (
            "checkpoint",  # the note's signature line
            lambda b: b.__setitem__(
                "checkpoint", _flip_unused_bits(b["checkpoint"][:-1], B64, True) + "\n"
            ),
        ),
    ],
)
def test_base64_that_only_a_lax_decoder_accepts_fails(
    small_bundle: bytes, where: str, change: Callable[[dict[str, Any]], None]
) -> None:
    report = verify_bundle(edit(small_bundle, change))
    assert_fails_with(report, where)


def test_whitespace_and_key_order_changes_fail(small_bundle: bytes) -> None:
    obj = json.loads(small_bundle)
    for variant in [
        json.dumps(obj, indent=2).encode() + b"\n",
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(),
        small_bundle + b"\n",
        small_bundle.replace(b"\n", b"\r\n"),
        json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n",  # unsorted
    ]:
        if variant == small_bundle:
            continue
        assert_fails_with(verify_bundle(variant), "bundle file: ", "canonical")


def test_duplicate_keys_and_floats_fail(small_bundle: bytes) -> None:
    duplicated = small_bundle.replace(b'"format":', b'"format":"x","format":', 1)
    assert duplicated != small_bundle
    assert_fails_with(verify_bundle(duplicated), "bundle file: ", "duplicate key")
    floated = small_bundle.replace(b'"index":0', b'"index":0.0', 1)
    assert floated != small_bundle
    assert_fails_with(verify_bundle(floated), "bundle file: ", "float")


# --- dropped, reordered, swapped --------------------------------------------------------


def test_a_dropped_receipt_fails_by_record_and_index(ledger: SampleLedger) -> None:
    data = ledger.bundle("acme")
    record_id = json.loads(data)["receipts"][1]["entry"]["record"]["record_id"]
    dropped = edit(data, lambda b: b["receipts"].pop(1))
    assert_fails_with(
        verify_bundle(dropped),
        f"log index 2: receipt list: record {record_id} is in the signed manifest but "
        "missing from the bundle",
    )
    # Dropping it from the manifest too breaks the manifest's signature.
    both = edit(dropped, lambda b: b["manifest"]["receipts"].pop(1))
    assert_fails_with(verify_bundle(both), "manifest signature: envelope signature does not verify")


def test_a_receipt_dropped_by_the_control_plane_shows_against_the_held_copy(
    ledger: SampleLedger,
) -> None:
    held = sign_usage_record(ledger.entries[2].record, ledger.node_keys["node-b"])
    assert held == ledger.entries[2].node_jws  # what the client was handed at teardown
    # The log operator itself leaves it out and signs the smaller manifest.
    partial = [r for r in ledger.receipts("acme") if r.index != 2]
    data = ledger.bundle("acme", receipts=partial)
    assert verify_bundle(data).ok  # internally consistent...
    report = verify_held_receipt(held, data)  # ...but the client's copy exposes it
    assert_fails_with(
        report,
        f"held receipt: record {ledger.entries[2].record.record_id} is not in the bundle: "
        "the log is missing a genuine, node-signed record of this client and period",
    )


def test_reordered_receipts_fail(ledger: SampleLedger) -> None:
    data = ledger.bundle("acme")

    def swap(b: dict[str, Any]) -> None:
        b["receipts"][0], b["receipts"][1] = b["receipts"][1], b["receipts"][0]

    assert_fails_with(
        verify_bundle(edit(data, swap)),
        "receipt #1, log index 0: receipt order: comes after log index 2",
    )


def test_a_reordered_log_fails_its_inclusion_proofs(ledger: SampleLedger) -> None:
    # Entries 0 and 2 trade places; the log key re-signs the manifest, but the proofs
    # and the signed tree head were made over the real order.
    real = ledger.receipts("acme")
    swapped = [
        ReceiptProof(real[0].index, real[1].entry, real[0].inclusion_proof),
        ReceiptProof(real[1].index, real[0].entry, real[1].inclusion_proof),
        real[2],
    ]
    data = ledger.bundle("acme", receipts=swapped, self_check=False)
    report = verify_bundle(data, log_key=ledger.log_key.public_key())
    assert_fails_with(
        report,
        "receipt #0, log index 0: inclusion proof: inclusion proof for leaf 0 does not lead "
        "to the root of tree size 5",
        "receipt #1, log index 2: inclusion proof:",
    )
    assert "receipt #2" not in "\n".join(messages(report))


def test_a_checkpoint_swapped_for_an_older_one_fails(ledger: SampleLedger) -> None:
    older = ledger.checkpoint(4)  # genuine, signed by the log key
    data = edit(ledger.bundle("acme"), lambda b: b.__setitem__("checkpoint", older))
    assert_fails_with(
        verify_bundle(data),
        "checkpoint: the checkpoint is not the one the signed manifest names",
        "log index 4: inclusion proof: leaf index 4 is outside a tree of 4",
    )


def test_edited_record_fails_leaf_hash_and_node_signature(ledger: SampleLedger) -> None:
    def fewer_tokens(b: dict[str, Any]) -> None:
        b["receipts"][1]["entry"]["record"]["completion_tokens"] = 1

    assert_fails_with(
        verify_bundle(edit(ledger.bundle("acme"), fewer_tokens)),
        "receipt #1, log index 2: leaf hash: the entry is not the one the signed manifest lists",
        "receipt #1, log index 2: node signature: the entry's record is not what the node signed",
        "receipt #1, log index 2: inclusion proof",
    )


# --- wrong keys -------------------------------------------------------------------------


def test_a_wrong_node_key_fails_that_nodes_receipts(ledger: SampleLedger) -> None:
    keys = {
        "node-a": ledger.node_keys["node-b"].public_key(),
        "node-b": ledger.node_keys["node-b"].public_key(),
    }
    report = verify_bundle(ledger.bundle("acme", node_keys=keys, self_check=False))
    assert_fails_with(
        report,
        "receipt #0, log index 0: node signature: usage record from node 'node-a': "
        "envelope signed by an untrusted key",
        "receipt #2, log index 4: node signature",
    )
    assert "receipt #1" not in "\n".join(messages(report))  # node-b's receipt is fine


def test_a_wrong_pinned_log_key_fails(ledger: SampleLedger) -> None:
    other = fixed_key(42).public_key()
    report = verify_bundle(ledger.bundle("acme"), log_key=other)
    assert_fails_with(
        report,
        f"log key: the bundle's log key (kid {key_id(ledger.log_key.public_key())}) is not "
        f"the pinned key (kid {key_id(other)})",
        "manifest signature: envelope signed by an untrusted key",
        "checkpoint signature: note is not signed by key",
    )


def test_a_bundle_forged_with_another_log_key(ledger: SampleLedger) -> None:
    forger = SampleLedger(log_key=fixed_key(42), node_keys=ledger.node_keys)
    for entry in ledger.entries:
        forger.append(entry)
    forged = forger.bundle("acme")
    # Pinned, it fails; unpinned, it verifies but says whose key it trusted.
    assert_fails_with(verify_bundle(forged, log_key=ledger.log_key.public_key()), "log key: ")
    report = verify_bundle(forged)
    assert report.ok and key_id(fixed_key(42).public_key()) in report.warnings[0]


def test_a_checkpoint_signed_by_another_key_fails(ledger: SampleLedger) -> None:
    data = ledger.bundle("acme")
    obj = json.loads(data)
    head = Checkpoint(ORIGIN, 5, ledger.tree.root())
    obj["checkpoint"] = sign_checkpoint(head, fixed_key(42))
    report = verify_bundle(canonical_json(obj) + b"\n")
    assert_fails_with(
        report, "checkpoint signature: note is not signed by key 'sanctum.test/ledger'"
    )


# --- what a bundle may hold -------------------------------------------------------------


def test_another_clients_receipt_fails(ledger: SampleLedger) -> None:
    mixed = sorted(ledger.receipts("acme") + ledger.receipts("globex")[:1], key=lambda r: r.index)
    data = ledger.bundle("acme", receipts=mixed, self_check=False)
    assert_fails_with(
        verify_bundle(data), "receipt #1, log index 1: record: is for client 'globex', not 'acme'"
    )


def test_a_period_is_half_open_on_ended_at(ledger: SampleLedger) -> None:
    since, until = T0 + timedelta(minutes=2), T0 + timedelta(minutes=4, seconds=42)
    data = ledger.bundle("acme", since=since, until=until)
    report = verify_bundle(data)
    assert report.ok and report.receipt_count == 1  # index 2 only; index 4 ends at `until`
    # Given the receipts explicitly, the fixture doesn't filter them by period.
    outside = ledger.bundle(
        "acme", since=since, until=until, receipts=ledger.receipts("acme"), self_check=False
    )
    assert_fails_with(
        verify_bundle(outside),
        "receipt #0, log index 0: period: ended at 2025-03-01T09:00:42.000Z, outside "
        "[2025-03-01T09:02:00.000Z, 2025-03-01T09:04:42.000Z)",
    )


def test_build_bundle_refuses_what_would_not_verify(ledger: SampleLedger) -> None:
    real = ledger.receipts("acme")
    wrong = [ReceiptProof(real[0].index, real[0].entry, real[1].inclusion_proof), *real[1:]]
    with pytest.raises(LedgerError, match="receipt #0, log index 0: inclusion proof"):
        build_bundle(
            client_id="acme",
            since=None,
            until=None,
            generated_at=T0,
            checkpoint=ledger.checkpoint(),
            receipts=wrong,
            node_keys=ledger.node_public_keys,
            log_key=ledger.log_key,
            log_key_name=ORIGIN,
        )
    with pytest.raises(LedgerError, match="same log index"):
        build_bundle(
            client_id="acme",
            since=None,
            until=None,
            generated_at=T0,
            checkpoint=ledger.checkpoint(),
            receipts=[real[0], real[0]],
            node_keys=ledger.node_public_keys,
            log_key=ledger.log_key,
            log_key_name=ORIGIN,
        )


# --- held receipts ----------------------------------------------------------------------


def test_a_held_receipt_is_found_at_its_index(ledger: SampleLedger) -> None:
    report = verify_held_receipt(ledger.entries[4].node_jws + "\n", ledger.bundle("acme"))
    assert report.ok and report.held_log_index == 4


def test_a_held_receipt_the_ledger_changed(ledger: SampleLedger) -> None:
    # The client holds what the node really signed; the ledger has a different record
    # under the same id (here: the node's genuine record had more tokens).
    record = ledger.entries[2].record.model_copy(update={"completion_tokens": 999})
    held = sign_usage_record(record, ledger.node_keys["node-b"])
    assert_fails_with(
        verify_held_receipt(held, ledger.bundle("acme")),
        f"log index 2: held receipt: the ledger holds a different record for record id "
        f"{record.record_id}",
    )


def test_held_receipts_of_another_client_forged_or_malformed(ledger: SampleLedger) -> None:
    data = ledger.bundle("acme")
    assert_fails_with(
        verify_held_receipt(ledger.entries[1].node_jws, data),
        "it is for client 'globex', the bundle for 'acme'",
    )
    forged = sign_usage_record(make_record(9, "acme", "node-a"), fixed_key(42))
    assert_fails_with(
        verify_held_receipt(forged, data),
        "held receipt: does not verify against the bundle's node keys",
    )
    assert_fails_with(
        verify_held_receipt("not a jws", data), "held receipt: the file is not a compact JWS"
    )


# --- consistency ------------------------------------------------------------------------


def test_consistency_from_every_earlier_size(ledger: SampleLedger) -> None:
    for old_size in range(ledger.tree.size + 1):
        old = ledger.checkpoint(old_size).encode()
        report = verify_consistency_files(
            old, ledger.consistency(old_size), log_key=ledger.log_key.public_key()
        )
        assert report.ok, (old_size, messages(report))
        assert (report.old_size, report.new_size) == (old_size, 5)


def test_consistency_from_a_saved_bundle(ledger: SampleLedger) -> None:
    old_bundle = ledger.bundle("acme")
    ledger.add("acme", "node-a")
    ledger.add("globex", "node-b")
    report = verify_consistency_files(old_bundle, ledger.consistency(5))
    assert report.ok and (report.old_size, report.new_size) == (5, 7)
    assert "--log-key" in report.warnings[0]


def test_a_rewritten_history_is_caught(ledger: SampleLedger) -> None:
    saved = ledger.checkpoint().encode()  # what the auditor kept last time
    rewritten = SampleLedger()
    for i in [0, 2, 1, 3, 4]:  # same entries, another order, same log key
        rewritten.append(ledger.entries[i])
    rewritten.add("acme")
    # On its own, the rewritten log's bundle verifies...
    assert verify_bundle(rewritten.bundle("acme")).ok
    # ...but it is not an extension of what was signed before.
    report = verify_consistency_files(
        saved, rewritten.consistency(5), log_key=ledger.log_key.public_key()
    )
    assert_fails_with(
        report, "consistency proof: consistency proof does not lead to the old root (size 5)"
    )


def test_consistency_failures_are_named(ledger: SampleLedger) -> None:
    old = ledger.checkpoint(3).encode()
    new = ledger.consistency(3)
    key = ledger.log_key.public_key()

    def changed(change: Callable[[dict[str, Any]], None]) -> bytes:
        obj = json.loads(new)
        change(obj)
        return json.dumps(obj, indent=1).encode()  # any JSON spelling is fine here

    assert verify_consistency_files(old, changed(lambda o: None), log_key=key).ok
    flipped = changed(lambda o: o["consistency_proof"].__setitem__(0, "A" * 43 + "="))
    assert_fails_with(
        verify_consistency_files(old, flipped, log_key=key), "consistency proof: consistency proof"
    )
    assert_fails_with(
        verify_consistency_files(ledger.checkpoint(2).encode(), new, log_key=key),
        "NEW proves growth from size 3, but OLD has size 2",
    )
    assert_fails_with(
        verify_consistency_files(old, new, log_key=fixed_key(42).public_key()),
        "log key: NEW carries log key kid",
        "old tree head: note is not signed by key",
    )
    other_log = sign_checkpoint(
        Checkpoint("other.example/log", 3, ledger.tree.root(3)), ledger.log_key
    )
    assert_fails_with(
        verify_consistency_files(other_log.encode(), new, log_key=key, log_key_name=ORIGIN),
        "old tree head: note is not signed by key 'sanctum.test/ledger'",
    )
    renamed = sign_checkpoint(
        Checkpoint("other.example/log", 3, ledger.tree.root(3)), ledger.log_key, name=ORIGIN
    )
    assert_fails_with(
        verify_consistency_files(renamed.encode(), new, log_key=key),
        "origin: OLD is for log 'other.example/log', NEW for 'sanctum.test/ledger'",
    )
    assert_fails_with(
        verify_consistency_files(old, b"{}", log_key=key),
        "consistency file: format: Field required",
    )
    assert_fails_with(
        verify_consistency_files(b"\xff", new, log_key=key), "old tree head: OLD is not UTF-8"
    )
    shrunk = ledger.consistency(5, 5)
    assert_fails_with(
        verify_consistency_files(
            ledger.checkpoint(5).encode(), ledger.consistency(3, 3), log_key=key
        ),
        "NEW proves growth from size 3, but OLD has size 5",
    )
    assert verify_consistency_files(ledger.checkpoint(5).encode(), shrunk, log_key=key).ok


def test_a_bundle_of_more_than_a_thousand_receipts_verifies(ledger: SampleLedger) -> None:
    # The signed manifest lists every receipt: past a thousand it outgrows joserfc's
    # default payload ceiling, which must not turn a real client's bundle into a failure.
    for _ in range(1200):
        ledger.add("acme")
    data = ledger.bundle("acme")
    report = verify_bundle(data, log_key=ledger.log_key.public_key())
    assert report.ok, messages(report)
    assert report.receipt_count == 1203
