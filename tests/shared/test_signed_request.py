"""Management requests signed by the control plane's key."""

from __future__ import annotations

import pytest

from shared.keys import generate_private_key
from shared.signed_request import SignedRequestError, SignedRequestVerifier, authorization


def test_signed_request_binds_method_path_and_body() -> None:
    key = generate_private_key()
    verifier = SignedRequestVerifier(key.public_key())
    header = authorization(key, "POST", "/internal/usage/ack?x=1", b'{"ids":[1]}')
    verifier.verify(header, "POST", "/internal/usage/ack?x=1", b'{"ids":[1]}')
    with pytest.raises(SignedRequestError, match="replayed"):
        verifier.verify(header, "POST", "/internal/usage/ack?x=1", b'{"ids":[1]}')
    for method, path, body in [
        ("GET", "/internal/usage/ack?x=1", b'{"ids":[1]}'),
        ("POST", "/internal/usage/ack?x=2", b'{"ids":[1]}'),
        ("POST", "/internal/usage/ack?x=1", b'{"ids":[2]}'),
    ]:
        fresh = authorization(key, "POST", "/internal/usage/ack?x=1", b'{"ids":[1]}')
        with pytest.raises(SignedRequestError):
            verifier.verify(fresh, method, path, body)


def test_other_key_and_missing_header_are_refused() -> None:
    verifier = SignedRequestVerifier(generate_private_key().public_key())
    with pytest.raises(SignedRequestError, match="missing"):
        verifier.verify(None, "GET", "/", b"")
    header = authorization(generate_private_key(), "GET", "/", b"")
    with pytest.raises(SignedRequestError, match="untrusted"):
        verifier.verify(header, "GET", "/", b"")
