"""The signed envelope: compact JWS, EdDSA, kid = RFC 7638 thumbprint, typ bound."""

from __future__ import annotations

import base64
import json

import pytest

from shared import envelope
from shared.keys import generate_private_key, key_id, public_jwk


def _part(token: str, i: int) -> dict:
    seg = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def test_round_trip_and_header() -> None:
    key = generate_private_key()
    token = envelope.sign({"b": 1, "a": "x"}, key, envelope.TYP_CONFIG)
    assert token.count(".") == 2
    header = _part(token, 0)
    assert header == {"alg": "EdDSA", "typ": envelope.TYP_CONFIG, "kid": key_id(key.public_key())}
    # the payload is the canonical JSON
    seg = token.split(".")[1]
    assert base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)) == b'{"a":"x","b":1}'
    assert envelope.verify(token, key.public_key(), envelope.TYP_CONFIG) == {"a": "x", "b": 1}


def test_rfc7638_thumbprint_vector() -> None:
    """RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    pub = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "="))
    assert public_jwk(pub)["x"] == x
    assert key_id(pub) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_wrong_key_wrong_type_and_tampering_are_refused() -> None:
    key, other = generate_private_key(), generate_private_key()
    token = envelope.sign({"v": 1}, key, envelope.TYP_CONFIG)
    with pytest.raises(envelope.EnvelopeError, match="untrusted key"):
        envelope.verify(token, other.public_key(), envelope.TYP_CONFIG)
    with pytest.raises(envelope.EnvelopeError, match="type"):
        envelope.verify(token, key.public_key(), envelope.TYP_USAGE_RECORD)
    h, _p, s = token.split(".")
    forged = base64.urlsafe_b64encode(b'{"v":2}').rstrip(b"=").decode()
    with pytest.raises(envelope.EnvelopeError, match="signature"):
        envelope.verify(f"{h}.{forged}.{s}", key.public_key(), envelope.TYP_CONFIG)
    with pytest.raises(envelope.EnvelopeError, match="malformed"):
        envelope.verify("abc", key.public_key(), envelope.TYP_CONFIG)


def test_kid_swapped_to_a_trusted_key_still_fails() -> None:
    key, trusted = generate_private_key(), generate_private_key()
    token = envelope.sign({"v": 1}, key, envelope.TYP_CONFIG)
    _, p, s = token.split(".")
    header = {"alg": "EdDSA", "typ": envelope.TYP_CONFIG, "kid": key_id(trusted.public_key())}
    h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    with pytest.raises(envelope.EnvelopeError, match="signature"):
        envelope.verify(f"{h}.{p}.{s}", trusted.public_key(), envelope.TYP_CONFIG)


def test_other_algorithms_are_refused() -> None:
    key = generate_private_key()
    token = envelope.sign({"v": 1}, key, envelope.TYP_CONFIG)
    _, p, _s = token.split(".")
    header = {"alg": "none", "typ": envelope.TYP_CONFIG, "kid": key_id(key.public_key())}
    h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    with pytest.raises(envelope.EnvelopeError, match="algorithm"):
        envelope.verify(f"{h}.{p}.", key.public_key(), envelope.TYP_CONFIG)


def test_a_payload_past_joserfcs_default_ceiling_signs_and_verifies() -> None:
    """joserfc refuses payloads over 128,000 bytes unless told otherwise; an audit
    manifest of a thousand receipts is larger than that."""
    key = generate_private_key()
    document = {"receipts": ["x" * 100] * 2000}  # about 206 kB of canonical JSON
    token = envelope.sign(document, key, envelope.TYP_AUDIT_MANIFEST)
    assert len(token.split(".")[1]) > 128_000
    assert envelope.verify(token, key.public_key(), envelope.TYP_AUDIT_MANIFEST) == document
    assert envelope.peek_header(token)["typ"] == envelope.TYP_AUDIT_MANIFEST
