"""The control plane's signing keys: one per purpose, rotated with an overlap.

A keyring is a directory on the control-plane host, never copied anywhere else:

- ``keyring.json``: for each key its purpose, ``kid``, state and times (public facts);
- ``<purpose>-<kid>.key``: the private key, PKCS#8 PEM, created exclusively 0600 and
  deleted when the key retires.

States: ``next`` (published, so targets learn to trust it, but signs nothing yet),
``active`` (signs), ``retiring`` (still trusted until ``not_after``, signs nothing),
``retired`` (private key gone; a log key stays published so old tree heads verify).

Rotating a config or management key is two steps, because a target must trust a key
before anything signed by it arrives: :meth:`Keyring.rotate` adds a ``next`` key (the
next releases carry it in their trust set), and once every target holds such a
release :meth:`Keyring.activate` makes it sign, leaving the old one trusted until the
overlap ends. A log key rotates in one step: verifiers take it from the published set.
"""

from __future__ import annotations

import fcntl
import json
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.keys import (
    KeyFileError,
    generate_private_key,
    key_id,
    load_private_key,
    write_atomically,
    write_private_key,
)
from shared.trust import LOG, PURPOSES, TRUST_FILE, KeySet, TrustedKey

State = Literal["next", "active", "retiring", "retired"]
INDEX = "keyring.json"
KEYRING_DIR = "control-plane"  # under a keys directory, beside the published TRUST_FILE


class KeyringError(ValueError):
    """The keyring is missing, inconsistent, or the step asked for does not apply."""


@dataclass(frozen=True)
class KeyEntry:
    purpose: str
    kid: str
    x: str
    state: State
    created_at: int
    activated_at: int | None = None
    not_after: int | None = None

    @property
    def file(self) -> str:
        return f"{self.purpose}-{self.kid}.key"

    def trusted(self) -> TrustedKey:
        return TrustedKey(x=self.x, kid=self.kid, purpose=self.purpose, not_after=self.not_after)  # type: ignore[arg-type]


class Keyring:
    """The keyring in ``directory``; re-read whenever its index changes on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._index = directory / INDEX
        self._entries: list[KeyEntry] = []
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Ed25519PrivateKey] = {}

    # --- reading -------------------------------------------------------------------

    def exists(self) -> bool:
        return self._index.is_file()

    def entries(self) -> list[KeyEntry]:
        try:
            st = self._index.stat()
        except FileNotFoundError:
            raise KeyringError(f"no keyring at {self.directory} (run: keys init)") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._check_modes()
            try:
                raw = json.loads(self._index.read_text("utf-8"))
                self._entries = [KeyEntry(**e) for e in raw["keys"]]
            except (OSError, ValueError, KeyError, TypeError):
                raise KeyringError(f"{self._index} is not a keyring index") from None
            self._stamp = stamp
            self._keys.clear()
        return list(self._entries)

    def _check_modes(self) -> None:
        """Refuse a keyring others may change: whoever can edit it can add a key."""
        for path in (self.directory, self._index):
            mode = path.stat().st_mode
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise KeyringError(
                    f"{path} may be changed by others (mode {stat.S_IMODE(mode):04o}): "
                    "chmod go-w it, and consider the keyring exposed"
                )

    def _trusted(self, entry: KeyEntry) -> TrustedKey:
        """What verifiers are told to trust for ``entry``: taken from its private key
        file while it has one (the index alone can't add a key), else from the index
        (a retired log key, kept so old tree heads verify)."""
        path = self.directory / entry.file
        if entry.state == "retired":
            return entry.trusted()
        key = self._keys.get(entry.kid) or load_private_key(path)
        if key_id(key.public_key()) != entry.kid:
            raise KeyringError(f"{entry.file} does not hold key {entry.kid}")
        self._keys[entry.kid] = key
        return TrustedKey.of(key.public_key(), entry.purpose, entry.not_after)

    def active(self, purpose: str) -> KeyEntry:
        found = [e for e in self.entries() if e.purpose == purpose and e.state == "active"]
        if len(found) != 1:
            raise KeyringError(f"the keyring has {len(found)} active {purpose} keys, not one")
        return found[0]

    def signer(self, purpose: str) -> Ed25519PrivateKey:
        """The active key of ``purpose``, loaded from its 0600 file."""
        entry = self.active(purpose)
        key = self._keys.get(entry.kid)
        if key is None:
            key = load_private_key(self.directory / entry.file)
            if key_id(key.public_key()) != entry.kid:
                raise KeyringError(f"{entry.file} does not hold key {entry.kid}")
            self._keys[entry.kid] = key
        return key

    def key_set(self, purposes: tuple[str, ...] = PURPOSES) -> KeySet:
        """What verifiers trust: next, active and retiring keys; retired log keys too."""
        keys = [
            self._trusted(e)
            for e in self.entries()
            if e.purpose in purposes and (e.state != "retired" or e.purpose == LOG)
        ]
        return KeySet(keys=tuple(keys))

    def publish(self, path: Path) -> KeySet:
        """Write the published key set (public keys only) to ``path``."""
        keys = self.key_set()
        write_atomically(path, (json.dumps(keys.document(), indent=2) + "\n").encode(), 0o644)
        return keys

    # --- changing ------------------------------------------------------------------

    @contextmanager
    def _changing(self) -> Iterator[list[KeyEntry]]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.entries() if self.exists() else []
            yield entries
            self._write(entries)

    def _write(self, entries: list[KeyEntry]) -> None:
        document = json.dumps({"keys": [asdict(e) for e in entries]}, indent=2)
        write_atomically(self._index, document.encode(), 0o600)
        self._stamp = None

    def _new(self, purpose: str, state: State, now: int) -> KeyEntry:
        key = generate_private_key()
        trusted = TrustedKey.of(key.public_key(), purpose)
        activated = now if state == "active" else None
        entry = KeyEntry(purpose, trusted.kid, trusted.x, state, now, activated)
        write_private_key(self.directory / entry.file, key)
        return entry

    def init(self, adopt: Path | None = None) -> list[KeyEntry]:
        """One active key per purpose that has none. ``adopt``: an existing single key
        file to start every purpose with (an upgrade; rotate each purpose afterwards)."""
        now = int(time.time())
        with self._changing() as entries:
            for purpose in PURPOSES:
                if any(e.purpose == purpose and e.state == "active" for e in entries):
                    continue
                if adopt is None:
                    entries.append(self._new(purpose, "active", now))
                    continue
                key = load_private_key(adopt)
                trusted = TrustedKey.of(key.public_key(), purpose)
                entry = KeyEntry(purpose, trusted.kid, trusted.x, "active", now, now)
                path = self.directory / entry.file
                if not path.exists():
                    write_private_key(path, key)
                entries.append(entry)
            return list(entries)

    def rotate(self, purpose: str) -> KeyEntry:
        """Add the next key of ``purpose`` (a log key becomes active at once)."""
        if purpose not in PURPOSES:
            raise KeyringError(f"no such purpose {purpose!r}; one of {', '.join(PURPOSES)}")
        now = int(time.time())
        with self._changing() as entries:
            if any(e.purpose == purpose and e.state == "next" for e in entries):
                raise KeyringError(f"a next {purpose} key exists already: activate it first")
            entry = self._new(purpose, "next", now)
            entries.append(entry)
        if purpose == LOG:
            return self.activate(LOG, overlap_seconds=0)
        return entry

    def activate(self, purpose: str, overlap_seconds: int) -> KeyEntry:
        """The next key signs from now on; the old active one is trusted for the overlap."""
        now = int(time.time())
        with self._changing() as entries:
            nxt = [i for i, e in enumerate(entries) if e.purpose == purpose and e.state == "next"]
            if not nxt:
                raise KeyringError(f"no next {purpose} key to activate: rotate first")
            for i, e in enumerate(entries):
                if e.purpose == purpose and e.state == "active":
                    retire_now = purpose == LOG or overlap_seconds <= 0
                    entries[i] = replace(
                        e,
                        state="retired" if retire_now else "retiring",
                        not_after=None if purpose == LOG else now + max(0, overlap_seconds),
                    )
            entries[nxt[0]] = replace(entries[nxt[0]], state="active", activated_at=now)
            activated = entries[nxt[0]]
        self.retire_expired()
        return activated

    def retire_expired(self, now: float | None = None) -> list[KeyEntry]:
        """Retiring keys past their overlap become retired; their private files go."""
        at = time.time() if now is None else now
        done: list[KeyEntry] = []
        if not self.exists():
            return done
        with self._changing() as entries:
            for i, e in enumerate(entries):
                ended = e.not_after is not None and e.not_after <= at
                if (e.state == "retiring" and ended) or (e.state == "retired" and e.purpose == LOG):
                    entries[i] = replace(e, state="retired")
                    if e.state == "retiring":
                        done.append(entries[i])
            for e in entries:
                if e.state == "retired":
                    (self.directory / e.file).unlink(missing_ok=True)
        return done


def open_keyring(directory: Path, *, create: bool) -> Keyring:
    """The keyring in ``directory``; with ``create``, made (one key per purpose) if missing."""
    ring = Keyring(directory)
    if not ring.exists():
        if not create:
            raise KeyringError(f"no keyring at {directory} (run: keys init)")
        ring.init()
    try:
        for purpose in PURPOSES:
            ring.active(purpose)
    except KeyFileError as exc:
        raise KeyringError(str(exc)) from None
    return ring


def dev_keyring(keys_dir: Path) -> Keyring:
    """Development's keyring: ``keys_dir/control-plane``, made if missing, its key set
    published beside it as ``keys_dir/control-plane-keys.json``."""
    ring = open_keyring(keys_dir / KEYRING_DIR, create=True)
    ring.publish(keys_dir / TRUST_FILE)
    return ring
