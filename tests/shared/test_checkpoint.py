"""C2SP signed notes and checkpoints: the Go reference vector, round trips, strict parsing."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.checkpoint import (
    Checkpoint,
    CheckpointError,
    note_key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_checkpoint_text,
    parse_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
)
from shared.merkle import EMPTY_ROOT, leaf_hash

# Test vector from golang.org/x/mod/sumdb/note, note_test.go (TestSign, TestOpen): the
# PeterNeumann key pair, its text and its signature, and EnochRoot's cosignature.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngo"
    "tpRZb6KE6RyyBwJnAM=\n"
)
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
)
# The example checkpoint text of https://c2sp.org/tlog-checkpoint.
C2SP_EXAMPLE_TEXT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)

ORIGIN = "sanctum.test/ledger"


def go_private_key() -> Ed25519PrivateKey:
    # PRIVATE+KEY+<name>+<id>+<base64>; the base64 itself may hold '+'.
    material = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert material[0] == 0x01  # Ed25519
    return Ed25519PrivateKey.from_private_bytes(material[1:])


@pytest.fixture
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)


def test_go_reference_note_is_reproduced_byte_for_byte() -> None:
    key = go_private_key()
    assert note_key_id("PeterNeumann", key.public_key()).hex() == "c74f20a3"
    assert verifier_key("PeterNeumann", key.public_key()) == GO_VKEY
    # Ed25519 is deterministic: our signer must produce Go's exact note.
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_TEXT + "\n" + GO_SIG


def test_go_reference_note_verifies_and_unknown_cosignatures_are_ignored() -> None:
    name, peter = parse_verifier_key(GO_VKEY)
    assert open_note(GO_TEXT + "\n" + GO_SIG + GO_ENOCH_SIG, name, peter) == GO_TEXT
    enoch_name, enoch = parse_verifier_key(GO_ENOCH_VKEY)
    assert open_note(GO_TEXT + "\n" + GO_SIG + GO_ENOCH_SIG, enoch_name, enoch) == GO_TEXT
    with pytest.raises(CheckpointError, match="not signed by key 'EnochRoot'"):
        open_note(GO_TEXT + "\n" + GO_SIG, enoch_name, enoch)
    tampered = GO_TEXT.replace("cryptography", "cryptographY")
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(tampered + "\n" + GO_SIG, name, peter)


def test_a_verifier_key_whose_base64_holds_a_plus_round_trips() -> None:
    # Standard base64 uses '+': the key part must not be split on it (Go's note.NewVerifier
    # splits off the name and the key id only).
    seed = next(
        bytes([i]) * 32
        for i in range(256)
        if "+"
        in verifier_key(
            "k", Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32).public_key()
        ).split("+", 2)[2]
    )
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    name, parsed = parse_verifier_key(verifier_key("sanctum.example/log", key))
    assert name == "sanctum.example/log"
    assert parsed.public_bytes_raw() == key.public_bytes_raw()


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not Ed25519
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # truncated
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_mangled_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(CheckpointError):
        parse_verifier_key(vkey)


def test_checkpoint_round_trip(log_key: Ed25519PrivateKey) -> None:
    head = Checkpoint(ORIGIN, 5, leaf_hash(b"x"))
    note = sign_checkpoint(head, log_key)
    lines = note.split("\n")
    assert lines[:4] == [ORIGIN, "5", base64.b64encode(leaf_hash(b"x")).decode(), ""]
    assert lines[4].startswith(f"— {ORIGIN} ") and lines[5] == ""
    assert len(base64.b64decode(lines[4].split(" ")[2])) == 4 + 64
    assert open_checkpoint(note, log_key.public_key()) == head
    assert open_checkpoint(note, log_key.public_key(), origin=ORIGIN) == head
    assert parse_checkpoint(note) == head


def test_empty_tree_checkpoint(log_key: Ed25519PrivateKey) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), log_key)
    assert open_checkpoint(note, log_key.public_key()).size == 0


def test_c2sp_example_checkpoint_text_parses() -> None:
    head = parse_checkpoint_text(C2SP_EXAMPLE_TEXT)
    assert (head.origin, head.size) == ("example.com/behind-the-sofa", 20852163)
    assert head.text() == C2SP_EXAMPLE_TEXT


def test_wrong_key_wrong_origin_and_tampering_fail(log_key: Ed25519PrivateKey) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, leaf_hash(b"x")), log_key)
    other = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
    with pytest.raises(CheckpointError, match="not signed by key"):
        open_checkpoint(note, other.public_key())
    with pytest.raises(
        CheckpointError, match=re.escape("is for log 'sanctum.test/ledger', expected")
    ):
        open_checkpoint(note, log_key.public_key(), origin="other.example/log")
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(note.replace("\n5\n", "\n6\n"), log_key.public_key())


def _note(text: str, log_key: Ed25519PrivateKey) -> str:
    """A note over any text, signed for real, to test the checkpoint parser behind it."""
    blob = note_key_id(ORIGIN, log_key.public_key()) + log_key.sign(text.encode())
    return f"{text}\n— {ORIGIN} {base64.b64encode(blob).decode()}\n"


ROOT_B64 = base64.b64encode(leaf_hash(b"x")).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{ORIGIN}\n05\n{ROOT_B64}\n", "leading zeros"),
        (f"{ORIGIN}\n-5\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n+5\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n 5\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n99999999999999999999\n{ROOT_B64}\n", "too large"),
        (f"{ORIGIN}\n5\n{ROOT_B64[:-2]}==\n", "canonical"),  # unused bits changed
        (f"{ORIGIN}\n5\n{ROOT_B64[:-1]}\n", "not base64"),
        (f"{ORIGIN}\n5\n{base64.b64encode(b'short').decode()}\n", "32 bytes"),
        (f"{ORIGIN}\n5\n", "needs an origin"),
        (f"{ORIGIN}\n5\n{ROOT_B64}\n\nextension\n", "extension lines must be non-empty"),
    ],
)
def test_malformed_checkpoint_text_is_refused_by_name(
    log_key: Ed25519PrivateKey, text: str, message: str
) -> None:
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(_note(text, log_key), log_key.public_key())


def test_the_root_hash_unused_bits_are_checked() -> None:
    # 32 bytes in base64 leave two unused bits in the last character before the '='.
    good = base64.b64encode(leaf_hash(b"x")).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(good[-2])
    for unused in (1, 2, 3):
        changed = good[:-2] + alphabet[last ^ unused] + "="
        assert base64.b64decode(changed) == base64.b64decode(good)  # a lax decoder agrees
        with pytest.raises(CheckpointError, match="canonical"):
            parse_checkpoint_text(f"{ORIGIN}\n5\n{changed}\n")


SIGNED = f"{ORIGIN}\n5\n{ROOT_B64}\n\n— {ORIGIN} " + base64.b64encode(b"k" * 68).decode() + "\n"


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (SIGNED[:-1], "must end with a newline"),
        (SIGNED.replace("\n\n", "\n"), "no blank line"),
        (SIGNED.replace("—", "-"), "em dash"),
        (SIGNED.replace(f"— {ORIGIN} ", f"— {ORIGIN}+x "), "'\\+'"),
        (SIGNED.replace(f"— {ORIGIN} ", "—  "), "non-empty"),
        (SIGNED.replace(f"— {ORIGIN} ", f"— {ORIGIN}"), "must be '— <name> <signature>'"),
        (SIGNED.replace("\n5\n", "\r\n5\n"), "control character"),
        (SIGNED.replace("\n5\n", "\n5\t\n"), "control character"),
        (SIGNED + "extra line\n", "em dash"),
        (SIGNED.replace("=\n", "\n"), "not base64"),
        (SIGNED.encode() + b"\xff", "UTF-8"),
        (SIGNED + SIGNED.split("\n\n")[1] * 100, "more than 100 signatures"),
        (f"{ORIGIN}\n5\n{ROOT_B64}\n\n", "no signature lines"),
    ],
)
def test_malformed_notes_are_refused_by_name(note: str | bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_note(note)


def test_checkpoint_fields_are_validated_when_made(log_key: Ed25519PrivateKey) -> None:
    with pytest.raises(CheckpointError, match="origin"):
        Checkpoint("two\nlines", 1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="tree size"):
        Checkpoint(ORIGIN, -1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="32 bytes"):
        Checkpoint(ORIGIN, 1, b"short")
    with pytest.raises(CheckpointError, match="key name"):
        sign_checkpoint(Checkpoint("has space", 1, EMPTY_ROOT), log_key)
