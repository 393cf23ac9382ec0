"""The usage record contract: no content, stable encoding, signed by the node it names."""

from __future__ import annotations

import base64
import json
import warnings
from datetime import datetime, timedelta, timezone
from typing import get_args

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey
from pydantic import ValidationError

from shared import envelope
from shared.canonical import canonical_json
from shared.keys import key_id
from shared.ledger import make_log_entry, verify_bundle, verify_held_receipt
from shared.usage import (
    ENDED_BY,
    MAX_TURN_TIMES,
    UsageAck,
    UsageRecord,
    UsageRecordError,
    format_timestamp,
    new_record_id,
    open_usage_record,
    sign_usage_record,
)
from tests.shared.conftest import T0, SampleLedger, fixed_key, make_record

NODE_A, NODE_B = fixed_key(2), fixed_key(3)
TRUSTED = {"node-a": NODE_A.public_key(), "node-b": NODE_B.public_key()}


def test_signed_record_round_trip() -> None:
    record = make_record(0, "acme", "node-a")
    token = sign_usage_record(record, NODE_A)
    assert open_usage_record(token, TRUSTED) == record
    header = envelope.peek_header(token)
    assert header == {
        "alg": "EdDSA",
        "typ": "sanctum-usage-record+jws",
        "kid": key_id(NODE_A.public_key()),
    }


def test_the_record_holds_only_ids_times_and_counts() -> None:
    document = make_record(0, "acme", "node-a").document()
    assert sorted(document) == [
        "client_id", "completion_tokens", "ended_at", "ended_by", "model", "model_sha256",
        "model_version", "node_id", "prompt_tokens", "record_id", "request_count",
        "session_id", "started_at",
    ]  # fmt: skip
    assert all(isinstance(v, (str, int)) for v in document.values())
    canonical_json(document)  # no floats, so the signed bytes are the same everywhere
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        UsageRecord.model_validate({**document, "prompt": "what did the client say"})


def test_a_record_without_turn_times_keeps_its_old_bytes() -> None:
    # Signed before first_token_ms existed: it parses, verifies, and its leaf is unchanged.
    record = make_record(0, "acme", "node-a")
    old_document = {
        "record_id": record.record_id, "session_id": "sess-0", "client_id": "acme",
        "node_id": "node-a", "model": "smollm2-135m", "model_version": "q8_0",
        "model_sha256": "5f" * 32, "started_at": "2025-03-01T09:00:00.000Z",
        "ended_at": "2025-03-01T09:00:42.000Z", "ended_by": "teardown",
        "request_count": 3, "prompt_tokens": 120, "completion_tokens": 80,
    }  # fmt: skip
    token = envelope.sign(old_document, NODE_A, envelope.TYP_USAGE_RECORD)
    opened = open_usage_record(token, TRUSTED)
    assert opened == record and opened.first_token_ms is None
    assert opened.document() == old_document
    entry = make_log_entry(token, TRUSTED, "2025-03-01T09:01:00.000Z")
    assert entry.leaf_data() == canonical_json(
        {"logged_at": "2025-03-01T09:01:00.000Z", "node_jws": token, "record": old_document}
    )
    # no times and an empty list are the same record, with one JSON form
    assert UsageRecord(**{**old_document, "first_token_ms": ()}).document() == old_document


def test_turn_times_round_trip() -> None:
    record = UsageRecord(
        **{**make_record(0, "acme", "node-a").document(), "first_token_ms": [412, 96, 88]}
    )
    assert record.first_token_ms == (412, 96, 88)
    assert record.document()["first_token_ms"] == [412, 96, 88]
    opened = open_usage_record(sign_usage_record(record, NODE_A), TRUSTED)
    assert opened == record and opened.first_token_ms == (412, 96, 88)


@pytest.mark.parametrize(
    "times", [[1.5], [True], [-1], ["12"], [0] * (MAX_TURN_TIMES + 1), "12", 12]
)
def test_malformed_turn_times_are_refused(times: object) -> None:
    document = {**make_record(0, "acme", "node-a").document(), "first_token_ms": times}
    with pytest.raises(ValidationError):
        UsageRecord.model_validate(document, strict=True)


@pytest.mark.parametrize("times", [[], None])
def test_a_signed_empty_or_null_turn_times_field_is_not_canonical(times: object) -> None:
    # The field is absent when there are no times: any other spelling would be a second
    # byte form of the same record.
    document = {**make_record(0, "acme", "node-a").document(), "first_token_ms": times}
    token = envelope.sign(document, NODE_A, envelope.TYP_USAGE_RECORD)
    with pytest.raises(UsageRecordError, match="canonical JSON"):
        open_usage_record(token, TRUSTED)


def test_timestamps_are_utc_strings() -> None:
    record = make_record(0, "acme", "node-a")
    assert record.started_at == "2025-03-01T09:00:00.000Z"
    paris = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2025, 3, 1, 10, 0, 0, 250_000, tzinfo=paris)) == (
        "2025-03-01T09:00:00.250Z"
    )
    document = record.document()
    for bad in ["2025-03-01 09:00:00Z", "2025-03-01T09:00:00+00:00", "2025-02-30T09:00:00Z"]:
        with pytest.raises(ValidationError):
            UsageRecord.model_validate({**document, "started_at": bad})
    with pytest.raises(ValidationError, match="timezone-aware"):
        UsageRecord.model_validate({**document, "started_at": datetime(2025, 3, 1)})
    with pytest.raises(ValidationError, match="ended_at is before started_at"):
        UsageRecord.model_validate({**document, "ended_at": "2025-03-01T08:00:00Z"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("record_id", "not-a-uuid"),
        ("record_id", "00000000-0000-1000-8000-000000000001"),  # version 1
        ("record_id", "00000000-0000-4000-8000-00000000000A"),  # not lowercase
        ("prompt_tokens", -1),
        ("prompt_tokens", 2**53),
        ("prompt_tokens", 1.5),
        ("request_count", True),
        ("ended_by", "crash"),
        ("model_sha256", "ABC"),
        ("client_id", "acme corp"),
    ],
)
def test_malformed_fields_are_refused(field: str, value: object) -> None:
    document = make_record(0, "acme", "node-a").document()
    with pytest.raises(ValidationError, match=field):
        UsageRecord.model_validate({**document, field: value}, strict=True)


def test_a_node_cannot_sign_for_another_node() -> None:
    forged = sign_usage_record(make_record(0, "acme", "node-b"), NODE_A)
    with pytest.raises(UsageRecordError, match="node 'node-b': envelope signed by an untrusted"):
        open_usage_record(forged, TRUSTED)


def test_unknown_nodes_and_rotated_keys() -> None:
    token = sign_usage_record(make_record(0, "acme", "node-a"), NODE_A)
    with pytest.raises(UsageRecordError, match="names node 'node-a', which has no trusted key"):
        open_usage_record(token, {"node-b": NODE_B.public_key()})
    # While a node rotates its key, both of its keys are trusted.
    rotating = {"node-a": [fixed_key(9).public_key(), NODE_A.public_key()]}
    assert open_usage_record(token, rotating).node_id == "node-a"


def test_other_envelope_types_are_not_usage_records() -> None:
    document = make_record(0, "acme", "node-a").document()
    config = envelope.sign(document, NODE_A, envelope.TYP_CONFIG)
    expected = "envelope type must be 'sanctum-usage-record\\+jws'"
    with pytest.raises(UsageRecordError, match=expected):
        open_usage_record(config, TRUSTED)


def _raw_jws(payload: bytes) -> str:
    header = {"alg": "EdDSA", "typ": envelope.TYP_USAGE_RECORD, "kid": key_id(NODE_A.public_key())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc's RFC 9864 note about the EdDSA name
        return jws.serialize_compact(
            header, payload, OKPKey.import_key(NODE_A), algorithms=["EdDSA"]
        )


def test_a_payload_that_is_not_canonical_json_is_refused() -> None:
    # Signed for real, but with spaces: two parsers could disagree about such bytes.
    document = make_record(0, "acme", "node-a").document()
    token = _raw_jws(json.dumps(document, sort_keys=True).encode())
    with pytest.raises(UsageRecordError, match="not the record's canonical JSON"):
        open_usage_record(token, TRUSTED)


def test_tampering_and_non_canonical_signature_encodings_are_refused() -> None:
    token = sign_usage_record(make_record(0, "acme", "node-a"), NODE_A)
    header, payload, signature = token.split(".")
    changed = json.loads(base64.urlsafe_b64decode(payload + "=="))
    changed["prompt_tokens"] += 1
    forged_payload = base64.urlsafe_b64encode(canonical_json(changed)).rstrip(b"=").decode()
    with pytest.raises(UsageRecordError, match="signature does not verify"):
        open_usage_record(f"{header}.{forged_payload}.{signature}", TRUSTED)
    # 64 bytes in 86 base64url characters leave 4 unused bits in the last one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    for unused in (1, 2, 4, 8):
        same_bytes = signature[:-1] + alphabet[last ^ unused]
        with pytest.raises(UsageRecordError, match="canonical base64url"):
            open_usage_record(f"{header}.{payload}.{same_bytes}", TRUSTED)
    for bad in ["", "a.b", f"{token}.", f" {token}", token.replace(".", "..", 1)]:
        with pytest.raises(UsageRecordError, match="not a compact JWS"):
            open_usage_record(bad, TRUSTED)


def test_record_ids_are_fresh_uuid4() -> None:
    first, second = new_record_id(), new_record_id()
    assert first != second
    UsageRecord.model_validate({**make_record(0, "a", "n").document(), "record_id": first})


def test_the_timestamp_spelling_is_kept_exactly() -> None:
    # A record signed elsewhere with microseconds keeps them: the signed bytes must not move.
    document = {**make_record(0, "acme", "node-a").document()}
    document["ended_at"] = "2025-03-01T09:00:42.123456Z"
    assert UsageRecord.model_validate(document).ended_at == "2025-03-01T09:00:42.123456Z"


@pytest.mark.parametrize("ended_by", ENDED_BY)
def test_every_way_a_session_ends_is_a_valid_record(ended_by: str) -> None:
    record = UsageRecord.model_validate(
        {**make_record(0, "acme", "node-a").document(), "ended_by": ended_by}
    )
    assert open_usage_record(sign_usage_record(record, NODE_A), TRUSTED).ended_by == ended_by


def test_ended_by_lists_exactly_what_the_record_accepts() -> None:
    allowed = set(get_args(UsageRecord.model_fields["ended_by"].annotation))
    assert allowed == set(ENDED_BY)
    assert "shutdown" in allowed  # a node ends its sessions when it stops or unpins a model


def test_a_shutdown_record_verifies_in_a_bundle_and_as_a_held_copy() -> None:
    log = SampleLedger()
    log.add("acme")
    record = UsageRecord.model_validate(
        {**make_record(1, "acme", "node-a").document(), "ended_by": "shutdown"}
    )
    held = sign_usage_record(record, log.node_keys["node-a"])
    log.append(make_log_entry(held, log.node_public_keys, T0 + timedelta(hours=1)))
    bundle = log.bundle("acme")
    report = verify_bundle(bundle)
    assert report.ok, [str(f) for f in report.failures]
    assert report.receipt_count == 2
    assert verify_held_receipt(held, bundle).ok


@pytest.mark.parametrize(
    "body",
    [{}, {"cursor": -1}, {"cursor": "3"}, {"cursor": 1.5}, {"record_ids": "x"}, {"extra": 1}],
)
def test_an_ack_must_name_a_cursor_or_ids(body: dict) -> None:
    with pytest.raises(ValidationError):
        UsageAck.model_validate(body)


def test_an_ack_may_name_both() -> None:
    ack = UsageAck.model_validate({"cursor": 7, "record_ids": [new_record_id()]})
    assert ack.cursor == 7 and len(ack.record_ids) == 1
