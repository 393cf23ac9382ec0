"""The control plane's Ed25519 signing key.

Production names it (``SANCTUM_CP_SIGNING_KEY``; settings refuse to start without it).
Development generates a pair under ``data_dir/keys`` on first use, so a fresh checkout
works; the public half (``control-plane.pub``) is what nodes must trust.
"""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from shared.keys import CONTROL_PLANE, ensure_key_pair, load_private_key, public_pem
from shared.signed_request import SignedRequestAuth


@functools.cache
def signing_key() -> Ed25519PrivateKey:
    cp = settings.SANCTUM
    if cp.signing_key is not None:
        return load_private_key(cp.signing_key)
    return ensure_key_pair(cp.keys_dir, CONTROL_PLANE)


def public_key_path() -> Path:
    """A PEM file of the public half, written beside the key if it is not there."""
    key = signing_key()
    path = settings.SANCTUM.signing_key_path.with_suffix(".pub")
    pem = public_pem(key.public_key())
    if not path.exists() or path.read_bytes() != pem:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pem)
    return path


def management_auth(audience: str) -> httpx.Auth:
    """httpx auth signing each request to the node or gateway named ``audience``."""
    return SignedRequestAuth(signing_key())
