"""Ed25519 keys: generation, PEM files, JWK form and RFC 7638 key ids.

The control plane holds one key per purpose (``shared.trust``); each data-plane node
and gateway signs with its own. Private key files are created exclusively with mode
0600, refused at load when anyone but their owner may read them, and never logged;
public keys travel as PEM files, JWKs or key sets. A private key file is never taken
as a public key: a verifier pins public halves only.

:class:`Signer` is what every signing call takes: an ``Ed25519PrivateKey`` is one, and
a hardware key plugs in by offering the same two methods.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.canonical import canonical_json

NODE = "node"


class KeyFileError(ValueError):
    """A key file is missing, unreadable, too widely readable, or not an Ed25519 key."""


@runtime_checkable
class Signer(Protocol):
    """Makes Ed25519 signatures without handing out the key (a file key, or an HSM)."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


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


def _write(path: Path, data: bytes, mode: int, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` with ``mode``, never through an existing file.

    The file is created exclusively (``O_EXCL``), so a file planted beforehand (or a
    symlink) is never written through; with ``overwrite`` a fresh temporary file is
    created the same way and renamed over the old one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(path.name + ".tmp") if overwrite else path
    if overwrite:
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only take bits away; say exactly which
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if overwrite:
        os.replace(target, path)


def fsync_dir(path: Path) -> None:
    """Make the names in directory ``path`` durable (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` in one step, through a temporary file created
    exclusively (never through a planted file or symlink), fsynced before the rename."""
    _write(path, data, mode, overwrite=True)


def write_private_key(path: Path, key: Ed25519PrivateKey, *, overwrite: bool = False) -> None:
    """``key`` as PKCS#8 PEM in a new 0600 file (``FileExistsError`` if one is there)."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    _write(path, private_pem(key), 0o600, overwrite=overwrite)


def write_public_key(path: Path, key: Ed25519PublicKey) -> None:
    _write(path, public_pem(key), 0o644, overwrite=True)


def write_key_pair(directory: Path, role: str, *, overwrite: bool = False) -> Path:
    """Write ``ROLE.key`` (0600) and ``ROLE.pub`` in ``directory``; return the .key path."""
    private_path = directory / f"{role}.key"
    key = generate_private_key()
    write_private_key(private_path, key, overwrite=overwrite)
    write_public_key(directory / f"{role}.pub", key.public_key())
    return private_path


def ensure_key_pair(directory: Path, role: str) -> Ed25519PrivateKey:
    """Load ``ROLE.key`` from ``directory``, generating the pair first if it is missing."""
    private_path = directory / f"{role}.key"
    if not private_path.exists():
        write_key_pair(directory, role)
    return load_private_key(private_path)


def check_private_file(path: Path | str) -> None:
    """Refuse a private key file that its group or others may read or write."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"can't read private key {path}: {type(exc).__name__}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key {path} is open to others (mode {stat.S_IMODE(mode):04o}): "
            "chmod 600 it, and consider it exposed"
        )


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    check_private_file(path)
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"can't read private key {path}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load a public key from a PEM file; a private key file is refused.

    A verifier pins the public half it was given: a private key in its place means the
    secret was copied where it does not belong, so it is an error, not a convenience.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        raise KeyFileError(f"no key file at {path}") from None
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} holds a private key: give the public half (.pub) to verifiers")
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
