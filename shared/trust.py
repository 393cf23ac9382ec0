"""Key sets: which control-plane keys are trusted, for what, and until when.

The control plane signs with one key per purpose, each with its own ``kid``:

- ``config``: node config bundles and gateway configs;
- ``management``: requests on the management link (``shared.signed_request``);
- ``log``: tree heads and audit bundle manifests.

A verifier trusts a *set* of keys per purpose, so a key can rotate with an overlap: the
new key is added to the set before it signs anything, the old one stays until its
``not_after`` and is refused from then on. The set is a JWKS (RFC 7517) whose keys
carry two members of ours, ``purpose`` and ``not_after`` (seconds since the epoch), and
that the control plane publishes (``GET /api/keys/``, ``keys.json``). A key set never
holds private material: a file that does is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.keys import KeyFileError, key_id, public_jwk, public_key_from_jwk

CONFIG = "config"
MANAGEMENT = "management"
LOG = "log"
PURPOSES = (CONFIG, MANAGEMENT, LOG)
Purpose = Literal["config", "management", "log"]

# The published key set's file name, where a target looks for its anchor by default.
TRUST_FILE = "control-plane-keys.json"

# What a node or gateway is told about, in its config: the log key is no business of
# theirs (auditors pin it).
TARGET_PURPOSES = (CONFIG, MANAGEMENT)


class TrustedKey(BaseModel):
    """One public key: an OKP JWK with its ``kid``, ``purpose`` and ``not_after``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    x: str = Field(min_length=43, max_length=43)
    kid: str = Field(min_length=43, max_length=43)
    purpose: Purpose
    not_after: int | None = Field(default=None, ge=0, description="refused from this moment")
    use: Literal["sig"] = "sig"

    @model_validator(mode="after")
    def _kid_is_the_thumbprint(self) -> TrustedKey:
        if key_id(self.public_key()) != self.kid:
            raise ValueError("kid is not the key's RFC 7638 thumbprint")
        return self

    @classmethod
    def of(cls, key: Ed25519PublicKey, purpose: str, not_after: int | None = None) -> TrustedKey:
        return cls(
            x=public_jwk(key)["x"],
            kid=key_id(key),
            purpose=purpose,  # type: ignore[arg-type]
            not_after=not_after,
        )

    def public_key(self) -> Ed25519PublicKey:
        try:
            return public_key_from_jwk({"kty": self.kty, "crv": self.crv, "x": self.x})
        except (KeyFileError, ValueError) as exc:
            raise ValueError(str(exc)) from None

    def valid_at(self, now: float) -> bool:
        return self.not_after is None or now < self.not_after


class KeySet(BaseModel):
    """A JWKS of trusted keys, by purpose."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # Every log key ever used stays published (old tree heads must verify): room for
    # decades of rotations, and a bound on what a file can make us parse.
    keys: tuple[TrustedKey, ...] = Field(default=(), max_length=4096)

    def public_keys(self, purpose: str, now: float | None = None) -> list[Ed25519PublicKey]:
        """The keys trusted for ``purpose`` at ``now`` (default: now)."""
        at = time.time() if now is None else now
        return [k.public_key() for k in self.keys if k.purpose == purpose and k.valid_at(at)]

    def kids(self, purpose: str) -> set[str]:
        return {k.kid for k in self.keys if k.purpose == purpose}

    def only(self, purposes: Iterable[str]) -> KeySet:
        wanted = set(purposes)
        return KeySet(keys=tuple(k for k in self.keys if k.purpose in wanted))

    def document(self) -> dict[str, Any]:
        return {"keys": [k.model_dump(exclude_none=True) for k in self.keys]}

    @classmethod
    def parse(cls, data: bytes | str, *, source: str = "key set") -> KeySet:
        """A key set from its JSON; refuses private material and anything malformed."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        if "PRIVATE KEY" in text:
            raise KeyFileError(f"{source} holds private key material: publish public keys only")
        try:
            document = json.loads(text)
            keys = document.get("keys") if isinstance(document, dict) else None
            if isinstance(keys, list) and any(isinstance(k, dict) and "d" in k for k in keys):
                raise KeyFileError(f"{source} holds private key material: publish public keys only")
            return cls.model_validate(document)
        except (ValueError, ValidationError) as exc:
            if isinstance(exc, KeyFileError):
                raise
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not JSON"
            raise KeyFileError(f"{source} is not a Sanctum key set: {detail}") from None


def load_key_set(path: Path | str) -> KeySet:
    try:
        data = Path(path).read_bytes()
    except OSError:
        raise KeyFileError(f"no key set at {path}") from None
    return KeySet.parse(data, source=str(path))
