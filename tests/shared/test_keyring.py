"""Key files, key sets and the control plane's keyring: one key per purpose, rotated."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from shared.keyring import Keyring, KeyringError, open_keyring
from shared.keys import (
    KeyFileError,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    write_key_pair,
)
from shared.trust import CONFIG, LOG, MANAGEMENT, PURPOSES, KeySet, TrustedKey


def test_a_private_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = write_key_pair(tmp_path, "node")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_private_key(path)
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(KeyFileError, match="open to others"):
            load_private_key(path)


def test_key_files_are_created_exclusively_never_through_a_planted_file(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not yours")
    os.symlink(target, tmp_path / "node.key")
    with pytest.raises(FileExistsError):
        write_key_pair(tmp_path, "node")
    assert target.read_text() == "not yours"


def test_a_verifier_never_takes_a_private_key_file_as_a_public_key(tmp_path: Path) -> None:
    path = write_key_pair(tmp_path, "node")
    assert key_id(load_public_key(tmp_path / "node.pub")) == key_id(
        load_private_key(path).public_key()
    )
    with pytest.raises(KeyFileError, match="private key"):
        load_public_key(path)


def test_a_key_set_refuses_private_material_and_wrong_kids(tmp_path: Path) -> None:
    key = generate_private_key()
    good = KeySet(keys=(TrustedKey.of(key.public_key(), CONFIG),))
    assert KeySet.parse(json.dumps(good.document())) == good
    with_d = good.document()
    with_d["keys"][0]["d"] = "secret"
    with pytest.raises(KeyFileError, match="private"):
        KeySet.parse(json.dumps(with_d))
    wrong_kid = good.document()
    wrong_kid["keys"][0]["kid"] = key_id(generate_private_key().public_key())
    with pytest.raises(KeyFileError, match="thumbprint"):
        KeySet.parse(json.dumps(wrong_kid))


def test_a_key_past_its_not_after_is_no_longer_trusted() -> None:
    key = generate_private_key().public_key()
    now = time.time()
    keys = KeySet(keys=(TrustedKey.of(key, CONFIG, not_after=int(now) + 10),))
    assert keys.public_keys(CONFIG, now) == [key]
    assert keys.public_keys(CONFIG, now + 10) == []
    assert keys.public_keys(MANAGEMENT, now) == []


def test_a_new_keyring_has_one_distinct_active_key_per_purpose(tmp_path: Path) -> None:
    ring = open_keyring(tmp_path / "ring", create=True)
    kids = {p: ring.active(p).kid for p in PURPOSES}
    assert len(set(kids.values())) == 3
    for purpose in PURPOSES:
        assert key_id(ring.signer(purpose).public_key()) == kids[purpose]
        file = tmp_path / "ring" / ring.active(purpose).file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    with pytest.raises(KeyringError):
        open_keyring(tmp_path / "none", create=False)


def test_rotating_a_config_key_publishes_it_first_then_overlaps_then_retires(
    tmp_path: Path,
) -> None:
    ring = open_keyring(tmp_path / "ring", create=True)
    old = ring.active(CONFIG)
    new = ring.rotate(CONFIG)
    assert ring.active(CONFIG) == old  # the next key signs nothing yet...
    assert ring.key_set().kids(CONFIG) == {old.kid, new.kid}  # ...but targets learn it
    with pytest.raises(KeyringError, match="activate it first"):
        ring.rotate(CONFIG)
    ring.activate(CONFIG, overlap_seconds=60)
    assert ring.active(CONFIG).kid == new.kid
    assert key_id(ring.signer(CONFIG).public_key()) == new.kid
    retiring = next(k for k in ring.key_set().keys if k.kid == old.kid)
    assert retiring.not_after is not None and retiring.not_after > time.time()
    assert ring.retire_expired(now=time.time() + 61)[0].kid == old.kid
    assert ring.key_set().kids(CONFIG) == {new.kid}
    assert not (tmp_path / "ring" / old.file).exists()  # a retired key can sign no more


def test_a_log_key_rotates_at_once_and_stays_published(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "ring")
    ring.init()
    old = ring.active(LOG)
    new = ring.rotate(LOG)
    assert ring.active(LOG).kid == new.kid
    published = ring.key_set()
    assert published.kids(LOG) == {old.kid, new.kid}  # old tree heads still verify
    assert not (tmp_path / "ring" / old.file).exists()


def test_a_keyring_can_start_from_a_single_legacy_key(tmp_path: Path) -> None:
    legacy = write_key_pair(tmp_path, "control-plane")
    ring = Keyring(tmp_path / "ring")
    ring.init(adopt=legacy)
    kid = key_id(load_private_key(legacy).public_key())
    assert {ring.active(p).kid for p in PURPOSES} == {kid}


def test_an_edited_index_can_not_add_a_key_and_a_keyring_open_to_others_is_refused(
    tmp_path: Path,
) -> None:
    ring = open_keyring(tmp_path / "ring", create=True)
    index = tmp_path / "ring" / "keyring.json"
    planted = TrustedKey.of(generate_private_key().public_key(), CONFIG)
    document = json.loads(index.read_text())
    document["keys"].append(
        {"purpose": CONFIG, "kid": planted.kid, "x": planted.x, "state": "next", "created_at": 1}
    )
    index.write_text(json.dumps(document))
    with pytest.raises(KeyFileError):  # no private key file behind the planted entry
        Keyring(tmp_path / "ring").key_set()
    fresh = open_keyring(tmp_path / "other", create=True)
    (tmp_path / "other").chmod(0o770)
    with pytest.raises(KeyringError, match="changed by others"):
        Keyring(tmp_path / "other").key_set()
    assert ring.exists() and fresh.exists()


def test_a_private_jwk_is_refused_as_a_key_set_however_it_is_spelt() -> None:
    key = generate_private_key()
    document = KeySet(keys=(TrustedKey.of(key.public_key(), CONFIG),)).document()
    text = json.dumps(document).replace('"use"', '"\\u0064": "secret", "use"')
    with pytest.raises(KeyFileError, match="private"):
        KeySet.parse(text)
