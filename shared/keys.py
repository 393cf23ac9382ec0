"""Ed25519 keys: generation, PEM files, JWK form and RFC 7638 key ids.

The control plane signs config and tree heads with its key; each data-plane node (and
gateway) signs usage records with its own. Private keys are written 0600 and never
logged; public keys travel as PEM files or JWKs.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.canonical import canonical_json

CONTROL_PLANE = "control-plane"
NODE = "node"
KEY_ROLES = (CONTROL_PLANE, NODE)


class KeyFileError(ValueError):
    """A key file is missing, unreadable, or not an Ed25519 key."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as an RFC 8037 OKP JWK (without ``kid``)."""
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_key_bytes(key))}


def key_id(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 over the required JWK members, canonical JSON."""
    return b64url(hashlib.sha256(canonical_json(public_jwk(key))).digest())


def public_key_from_jwk(jwk: dict[str, str]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "x" not in jwk:
        raise KeyFileError("not an Ed25519 OKP JWK")
    raw = b64url_decode(jwk["x"])
    if len(raw) != 32:
        raise KeyFileError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_key_pair(directory: Path, role: str, *, overwrite: bool = False) -> Path:
    """Write ``ROLE.key`` (0600) and ``ROLE.pub`` in ``directory``; return the .key path."""
    private_path = directory / f"{role}.key"
    if private_path.exists() and not overwrite:
        raise FileExistsError(f"{private_path} exists; pass --force to replace it")
    key = generate_private_key()
    _write(private_path, private_pem(key), 0o600)
    _write(directory / f"{role}.pub", public_pem(key.public_key()), 0o644)
    return private_path


def ensure_key_pair(directory: Path, role: str) -> Ed25519PrivateKey:
    """Load ``ROLE.key`` from ``directory``, generating the pair first if it is missing."""
    private_path = directory / f"{role}.key"
    if not private_path.exists():
        write_key_pair(directory, role)
    return load_private_key(private_path)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"can't read private key {path}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load a public key from a PEM file (a private key file gives its public half)."""
    data = Path(path).read_bytes() if Path(path).exists() else None
    if data is None:
        raise KeyFileError(f"no key file at {path}")
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    return public_key_from_pem(data, source=str(path))


def public_key_from_pem(data: bytes | str, *, source: str = "PEM") -> Ed25519PublicKey:
    if isinstance(data, str):
        data = data.encode("ascii")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"can't read public key from {source}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source} is not an Ed25519 public key")
    return key
