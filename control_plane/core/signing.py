"""The control plane's signing keys: one per purpose, in its keyring (``shared.keyring``).

Production names the keyring (``SANCTUM_CP_KEYRING``; settings refuse to start without
it) and an operator makes it with ``sanctum keys init``. Development makes one under
``data_dir/keys/control-plane`` on first use. Every signature the control plane makes
goes through :func:`signer`: config bundles and gateway configs with the ``config`` key,
management requests with the ``management`` key (:func:`management_auth`), tree heads
and bundle manifests with the ``log`` key. The public key set is kept published beside
the keyring (``control-plane-keys.json``) and served at ``GET /api/keys/``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from django.conf import settings

from shared.keyring import Keyring, open_keyring
from shared.keys import Signer
from shared.signed_request import SignedRequestAuth
from shared.trust import MANAGEMENT, TARGET_PURPOSES, KeySet


@functools.cache
def keyring() -> Keyring:
    cp = settings.SANCTUM
    return open_keyring(cp.keyring_dir, create=not cp.production)


def signer(purpose: str) -> Signer:
    """The active key of ``purpose`` (config, management or log)."""
    return keyring().signer(purpose)


def published_keys() -> KeySet:
    """Every key verifiers trust: next, active and retiring keys; every log key."""
    return keyring().key_set()


def target_trust() -> KeySet:
    """The config and management keys a node or gateway should trust now."""
    return keyring().key_set(TARGET_PURPOSES)


def publish() -> Path:
    """Write the published key set beside the keyring (when it changed); its path."""
    path: Path = settings.SANCTUM.published_keys_path
    keys = published_keys()
    try:
        current = KeySet.parse(path.read_bytes(), source=str(path))
    except (OSError, ValueError):
        current = None
    if current != keys:
        keyring().publish(path)
    return path


def management_auth(audience: str) -> SignedRequestAuth:
    """httpx auth signing each request to the node or gateway named ``audience``."""
    return SignedRequestAuth(signer(MANAGEMENT), audience)
