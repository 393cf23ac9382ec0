"""Canonical JSON is RFC 8785 (JCS), and everything signed before the switch still holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.canonical import CanonicalJSONError, canonical_json, jcs
from shared.keys import public_key_from_jwk
from shared.ledger import make_log_entry, verify_bundle, verify_held_receipt
from shared.merkle import leaf_hash
from shared.usage import open_usage_record

OLD = Path(__file__).parent / "fixtures" / "pre_jcs"


def _old(name: str) -> bytes:
    return (OLD / name).read_bytes()


def _key(name: str) -> Ed25519PublicKey:
    return public_key_from_jwk(json.loads(_old(name)))


# --- files the json.dumps(sort_keys=True) form produced --------------------------------


def test_an_old_usage_record_verifies_and_re_encodes_to_its_signed_bytes() -> None:
    token = _old("usage_record.jws").decode().strip()
    record = open_usage_record(token, {"node-a": _key("node-a.jwk")})
    assert record.commitments and record.first_token_ms == (12, 7)
    entry = make_log_entry(token, {"node-a": _key("node-a.jwk")}, "2025-03-01T09:03:00.000Z")
    assert entry.leaf_data() + b"\n" == _old("log_entry.json")
    assert entry.leaf_hash().hex() == _old("log_entry.leaf").decode().strip()
    assert leaf_hash(canonical_json(json.loads(_old("log_entry.json")))) == entry.leaf_hash()


def test_an_old_bundle_and_consistency_file_verify_and_re_encode_byte_for_byte() -> None:
    bundle = _old("bundle.json")
    log_key = _key("log-key.jwk")
    report = verify_bundle(bundle, log_key=log_key)
    assert report.ok, [str(f) for f in report.failures]
    assert canonical_json(json.loads(bundle)) + b"\n" == bundle
    held = verify_held_receipt(_old("usage_record.jws").decode(), bundle, log_key=log_key)
    assert held.ok and held.held_log_index == 2
    consistency = _old("consistency.json")
    assert canonical_json(json.loads(consistency)) + b"\n" == consistency


# --- RFC 8785 itself ----------------------------------------------------------------------


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FFFF; by code point it's after.
    document = {"\uffff": 2, "\U0001f600": 1}
    expected = '{"\U0001f600":1,"\uffff":2}'.encode()
    assert jcs(document) == expected
    assert canonical_json(document) == expected
    assert json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) != (
        expected.decode()
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.0, "1"),
        (2**60, "1152921504606847000"),  # beyond 2**53: the double it denotes
    ],
)
def test_numbers_take_the_ecmascript_form(number: float, text: str) -> None:
    assert jcs([number]) == f"[{text}]".encode()


def test_strings_escape_as_jcs_says() -> None:
    assert jcs('\u0000\b\t\n\f\r"\\/\u007f é') == (
        '"\\u0000\\b\\t\\n\\f\\r\\"\\\\/\u007f é"'.encode()
    )


@pytest.mark.parametrize(
    "value", ["\ud800", {"\udc00": 1}, ["ok", {"k": "x\udfffy"}]], ids=["str", "key", "nested"]
)
def test_lone_surrogates_are_refused_without_quoting_the_text(value: object) -> None:
    with pytest.raises(CanonicalJSONError, match="lone surrogate") as caught:
        jcs(value)
    assert str(caught.value).startswith(("a string ", "a key "))  # not where, not what
    with pytest.raises(CanonicalJSONError, match="lone surrogate"):
        canonical_json(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "a"}, {"a": b"x"}, 10**400])
def test_what_json_cannot_hold_is_refused(value: object) -> None:
    with pytest.raises(CanonicalJSONError):
        jcs(value)


def test_signed_contracts_still_refuse_floats_and_unsafe_integers() -> None:
    with pytest.raises(CanonicalJSONError, match=r"float at \.a\[0\]"):
        canonical_json({"a": [1.5]})
    with pytest.raises(CanonicalJSONError, match="beyond"):
        canonical_json({"n": 2**53})
    assert canonical_json({"n": 2**53 - 1}) == b'{"n":9007199254740991}'


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    from shared.canonical import MAX_DEPTH
    from shared.commitment import CommitmentError, commit

    deep: object = "x"
    for _ in range(600):
        deep = [deep]
    with pytest.raises(CanonicalJSONError, match="nested deeper"):
        jcs(deep)
    with pytest.raises(CommitmentError):
        commit(b"n" * 32, {"messages": deep}, "request")
    shallow: object = "x"
    for _ in range(MAX_DEPTH):
        shallow = [shallow]
    assert jcs(shallow).startswith(b"[[")
