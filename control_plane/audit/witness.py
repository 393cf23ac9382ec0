"""The newest signed tree head, kept where a restore of the database can't roll it back.

A control plane restored from an older backup holds a smaller ledger than the tree heads
it already handed out. Signing on from there would sign new tree heads at sizes auditors
already hold with other roots: a forked log. So the newest tree head is kept in two
places besides the database, and the ledger refuses to sign below either
(``ledger.check_not_behind``):

- the **witness file** (``SANCTUM_CP_LEDGER__WITNESS_FILE``), on a volume that is not
  part of the database's backup set; rewritten (atomically, under a file lock, only ever
  to a larger tree) after every commit that signs a tree head, before any node is told;
- the **nodes**: every acknowledgement carries the latest tree head, each node keeps the
  largest it was handed (``acks.json``) and reports it with every usage page and in its
  health; the control plane keeps what each node reports on ``CollectionState.tree_head``.

Every tree head read back is verified against the log key (and the log's origin) first:
a file or a node can make the ledger refuse, never make it accept.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from control_plane.audit.models import CollectionState
from control_plane.core.signing import published_keys, signer
from shared.checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_checkpoint
from shared.keys import public_key_bytes, write_atomically
from shared.trust import LOG

log = logging.getLogger(__name__)


class WitnessError(RuntimeError):
    """The witness file is there but can't be read or does not verify."""


@dataclass(frozen=True)
class Witnessed:
    """A tree head kept outside the database, and where it was found."""

    size: int
    root: bytes
    note: str
    source: str  # "witness file" or "node NAME"


def witness_path() -> Path | None:
    path = settings.SANCTUM.ledger.witness_file
    return Path(path) if path else None


@functools.lru_cache(maxsize=256)
def _verified(note: str, key: bytes, name: str, origin: str) -> Checkpoint:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return open_checkpoint(note, Ed25519PublicKey.from_public_bytes(key), name=name, origin=origin)


def verify_head(note: str) -> Checkpoint:
    """The checkpoint in ``note`` if a log key signed it for this log; else CheckpointError.

    Any log key the control plane has published counts (the current one first): a head
    signed before a log-key rotation is still the log's.
    """
    ledger = settings.SANCTUM.ledger
    current = public_key_bytes(signer(LOG).public_key())
    others = [public_key_bytes(k) for k in published_keys().public_keys(LOG, now=0)]
    failure: CheckpointError | None = None
    for key in dict.fromkeys([current, *others]):
        try:
            return _verified(note, key, ledger.note_key_name, ledger.origin)
        except CheckpointError as exc:
            failure = failure or exc
    assert failure is not None
    raise failure


def read_witness_file() -> Witnessed | None:
    """The witness file's tree head (``None`` when none is configured or written yet)."""
    path = witness_path()
    if path is None:
        return None
    try:
        note = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessError(f"the ledger witness file {path} can't be read: {exc}") from None
    try:
        head = verify_head(note)
    except CheckpointError as exc:
        raise WitnessError(f"the ledger witness file {path} does not verify: {exc}") from None
    return Witnessed(head.size, head.root_hash, note, "witness file")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def write_witness_file(note: str) -> None:
    """Keep ``note`` in the witness file if its tree is larger than the one there.

    Called after the commit that signed it; a failure is logged, not raised (the tree
    head is committed; the nodes still get it with their acknowledgement), and the next
    signing writes the file again.
    """
    path = witness_path()
    if path is None:
        return
    size = parse_checkpoint(note).size
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            with contextlib.suppress(FileNotFoundError, CheckpointError, ValueError):
                if parse_checkpoint(path.read_bytes()).size >= size:
                    return
            write_atomically(path, note.encode("utf-8"), 0o644)
    except OSError as exc:
        log.error("ledger witness file %s not written (tree size %d): %s", path, size, exc)


def remember_node_head(state: CollectionState, note: str | None) -> Witnessed | None:
    """Keep the tree head a node reported on its collection state if it verifies and is
    larger than the one kept; return it as :class:`Witnessed` (``None`` if it isn't one)."""
    if not note:
        return None
    try:
        head = verify_head(note)
    except CheckpointError as exc:
        log.warning("node %s reports a tree head that does not verify: %s", state.node_id, exc)
        return None
    kept = _node_size(state.tree_head)
    if head.size > kept:
        CollectionState.objects.filter(pk=state.pk).update(tree_head=note)
        state.tree_head = note
    return Witnessed(head.size, head.root_hash, note, f"node {state.node_id}")


def _node_size(note: str) -> int:
    try:
        return verify_head(note).size if note else -1
    except CheckpointError:
        return -1


def node_heads() -> list[Witnessed]:
    """The tree heads the nodes reported (kept on their collection states), verified."""
    out = []
    for node, note in CollectionState.objects.exclude(tree_head="").values_list(
        "node__name", "tree_head"
    ):
        with contextlib.suppress(CheckpointError):
            head = verify_head(note)
            out.append(Witnessed(head.size, head.root_hash, note, f"node {node}"))
    return out


def witnessed_heads() -> list[Witnessed]:
    """Every tree head kept outside the database, largest first."""
    heads = node_heads()
    kept = read_witness_file()
    if kept is not None:
        heads.append(kept)
    return sorted(heads, key=lambda h: h.size, reverse=True)
