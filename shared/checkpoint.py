"""Signed tree heads as C2SP checkpoints (https://c2sp.org/tlog-checkpoint), Ed25519 notes.

A tree head is a *signed note* (https://c2sp.org/signed-note) whose text is::

    <origin>\\n
    <tree size in decimal, no leading zeros>\\n
    <root hash, standard base64 with padding>\\n
    [extension lines, each non-empty]\\n

followed by a blank line and one or more signature lines::

    — <key name> <base64(4-byte key id || 64-byte Ed25519 signature over the text)>\\n

where the key id is the first four bytes of
``SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)``. Sanctum's log signs
with key name = origin, as the spec recommends. Any tool of the transparency-dev / Go
``sumdb/note`` family can check our tree heads; the verifier key string for them is
:func:`verifier_key`.

Parsing is strict: the note must be UTF-8 without control characters, every line must
have its exact form, numbers and base64 must be in their one canonical spelling, and the
first failure is reported as a :class:`CheckpointError` that says what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)

from shared.canonical import CanonicalEncodingError, b64decode_canonical
from shared.keys import Signer, public_key_bytes
from shared.merkle import HASH_SIZE

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
SIG_TYPE_ED25519 = 0x01
MAX_SIGNATURES = 100  # the spec asks for at least 16; Go's sumdb/note allows 100
MAX_NOTE_BYTES = 1 << 20
MAX_TREE_SIZE = (1 << 63) - 1  # what an SQL BIGINT and Go's verifiers can hold

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SPACE = re.compile(r"\s")


class CheckpointError(ValueError):
    """A checkpoint or signed note is malformed, or its signature does not verify."""


def check_key_name(name: str) -> None:
    """Refuse a note key name the signed-note spec forbids (empty, spaces, '+')."""
    if not isinstance(name, str) or not name:
        raise CheckpointError("key name must be non-empty")
    if "+" in name or _SPACE.search(name) or _CONTROL.search(name):
        raise CheckpointError("key name must not hold spaces, '+' or control characters")


def note_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte signed-note key id of an Ed25519 key under ``name``."""
    check_key_name(name)
    material = bytes([SIG_TYPE_ED25519]) + public_key_bytes(public_key)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + material).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The ``name+keyid+base64(0x01||key)`` verifier key string of the note ecosystem."""
    key_id = note_key_id(name, public_key).hex()
    material = bytes([SIG_TYPE_ED25519]) + public_key_bytes(public_key)
    return f"{name}+{key_id}+{base64.b64encode(material).decode('ascii')}"


def parse_verifier_key(vkey: str) -> tuple[str, Ed25519PublicKey]:
    """Parse a verifier key string (Ed25519 only); check its key id. Returns (name, key)."""
    # The key is standard base64, which may itself hold '+': split off two fields only.
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise CheckpointError("verifier key must be name+keyid+base64key")
    name = parts[0]
    check_key_name(name)
    try:
        material = b64decode_canonical(parts[2], length=33, what="verifier key")
    except CanonicalEncodingError as exc:
        raise CheckpointError(str(exc)) from None
    if material[0] != SIG_TYPE_ED25519:
        raise CheckpointError("verifier key is not an Ed25519 key")
    key = Ed25519PublicKey.from_public_bytes(material[1:])
    if note_key_id(name, key).hex() != parts[1]:
        raise CheckpointError("verifier key id does not match its name and key")
    return name, key


@dataclass(frozen=True)
class Checkpoint:
    """The note text of a tree head: which log, how many leaves, and their root."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or _CONTROL.search(self.origin):
            raise CheckpointError("origin must be one non-empty line")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"tree size must be an integer in 0..{MAX_TREE_SIZE}")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")
        for line in self.extensions:
            if not line or "\n" in line or _CONTROL.search(line):
                raise CheckpointError("extension lines must be non-empty single lines")

    def text(self) -> str:
        """The note text, ending in a newline: what the signatures cover."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A parsed, not yet verified, signed note."""

    text: str
    signatures: tuple[NoteSignature, ...]


def parse_note(data: str | bytes) -> SignedNote:
    """Split a signed note into its text and signature lines, strictly. No verification."""
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE_BYTES:
            raise CheckpointError("note is too large")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("note is not valid UTF-8") from None
    if len(data.encode("utf-8")) > MAX_NOTE_BYTES:
        raise CheckpointError("note is too large")
    if _CONTROL.search(data):
        raise CheckpointError("note holds a control character (only newlines are allowed)")
    if not data.endswith("\n"):
        raise CheckpointError("note must end with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no blank line before its signatures")
    text, block = data[: split + 1], data[split + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise CheckpointError("note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has more than {MAX_SIGNATURES} signatures")
    signatures = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(f"signature line {number} must start with an em dash and space")
        name, sep, blob = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not sep:
            raise CheckpointError(f"signature line {number} must be '— <name> <signature>'")
        try:
            check_key_name(name)
        except CheckpointError as exc:
            raise CheckpointError(f"signature line {number}: {exc}") from None
        try:
            raw = b64decode_canonical(blob, what=f"signature line {number}")
        except CanonicalEncodingError as exc:
            raise CheckpointError(str(exc)) from None
        if len(raw) < 5:
            raise CheckpointError(f"signature line {number} is too short")
        signatures.append(NoteSignature(name=name, key_id=raw[:4], signature=raw[4:]))
    return SignedNote(text=text, signatures=tuple(signatures))


def sign_note(text: str, name: str, key: Signer) -> str:
    """Sign ``text`` (which must end in a newline) and return the signed note."""
    check_key_name(name)
    if not text.endswith("\n") or _CONTROL.search(text) or "\n\n" in "\n" + text:
        # A leading, doubled or missing newline would move the text/signature boundary.
        raise CheckpointError("note text must be non-empty lines, each ending in a newline")
    blob = note_key_id(name, key.public_key()) + key.sign(text.encode("utf-8"))
    note = f"{text}\n{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}\n"
    parse_note(note)  # what we hand out must be what we accept
    return note


def open_note(data: str | bytes, name: str, key: Ed25519PublicKey) -> str:
    """Verify the note against the key ``(name, key)`` and return its text.

    Signatures from other keys are ignored (signed-note: verifiers MUST ignore unknown
    keys, which is what lets witnesses cosign); every signature line of this key must
    verify, and there must be at least one.
    """
    note = parse_note(data)
    key_id = note_key_id(name, key)
    mine = [s for s in note.signatures if s.name == name and s.key_id == key_id]
    if not mine:
        names = ", ".join(sorted({s.name for s in note.signatures}))
        raise CheckpointError(f"note is not signed by key {name!r} (signed by: {names})")
    for sig in mine:
        try:
            key.verify(sig.signature, note.text.encode("utf-8"))
        except InvalidSignature:
            raise CheckpointError(f"signature by key {name!r} does not verify") from None
    return note.text


def parse_checkpoint_text(text: str) -> Checkpoint:
    """Parse the note text of a checkpoint (no signatures), strictly."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs an origin, a tree size and a root hash line")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("checkpoint origin line is empty")
    if not _DECIMAL.fullmatch(size_line):
        raise CheckpointError("checkpoint tree size is not a decimal without leading zeros")
    size = int(size_line)
    if size > MAX_TREE_SIZE:
        raise CheckpointError("checkpoint tree size is too large")
    try:
        root = b64decode_canonical(root_line, length=HASH_SIZE, what="checkpoint root hash")
    except CanonicalEncodingError as exc:
        raise CheckpointError(str(exc)) from None
    if any(not line for line in extensions):
        raise CheckpointError("checkpoint extension lines must be non-empty")
    return Checkpoint(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))


def parse_checkpoint(data: str | bytes) -> Checkpoint:
    """Parse a signed checkpoint without verifying it (to read its origin or size)."""
    return parse_checkpoint_text(parse_note(data).text)


def sign_checkpoint(checkpoint: Checkpoint, key: Signer, name: str | None = None) -> str:
    """The signed checkpoint note; the key name defaults to the origin (spec: SHOULD)."""
    return sign_note(checkpoint.text(), checkpoint.origin if name is None else name, key)


def open_checkpoint(
    data: str | bytes,
    key: Ed25519PublicKey,
    *,
    name: str | None = None,
    origin: str | None = None,
) -> Checkpoint:
    """Verify a signed checkpoint against ``key`` and return it.

    ``name`` is the log's key name (default: the checkpoint's own origin); ``origin``,
    when given, must equal the checkpoint's origin, so a tree head of another log
    signed by the same key is refused.
    """
    checkpoint = parse_checkpoint(data)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    open_note(data, checkpoint.origin if name is None else name, key)
    return checkpoint
