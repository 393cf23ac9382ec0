"""RFC 6962 / RFC 9162 Merkle trees: hashing, roots, inclusion and consistency proofs.

The receipt ledger is an append-only log of leaves. Its hashing is the one Certificate
Transparency uses, so any RFC 6962 verifier can check our proofs:

- leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left || right)``
  (the prefixes keep a leaf from ever passing as a node, and the other way round);
- the tree of ``n`` leaves splits at ``k``, the largest power of two below ``n``: the
  left side is the complete subtree of the first ``k`` leaves, the right side the tree of
  the remaining ``n - k``; the tree of no leaves hashes to ``SHA-256("")``.

Generation works over a **subtree-hash callback** rather than a list of leaves, so a
control plane that keeps a million receipts in a SQL table never loads them all:

- A *complete subtree* is a range ``[start, end)`` whose size is a power of two and whose
  ``start`` is a multiple of that size. Its hash is fixed once its last leaf is appended,
  so the caller stores it (level ``log2(end - start)``, index ``start >> level``) at the
  moment :meth:`CompactRange.append` reports it, and ``subtree_hash(start, end)``
  becomes one indexed lookup.
- Every range that the RFC's recursion visits starts at a multiple of the next power of
  two at or above its size, so it is a run of at most ``log2(n)`` complete subtrees,
  largest first; :func:`range_hash` folds them.

Complexity, for a tree of ``n`` leaves (``log`` is ``ceil(log2 n)``):

- :meth:`CompactRange.append`: amortised O(1), worst O(log n) hashes; it returns the
  complete subtrees the append finished (one per level it climbed) for the caller to
  store. :meth:`CompactRange.root`: O(log n) hashes. The state is O(log n) hashes.
- :func:`inclusion_proof` and :func:`consistency_proof`: O(log n) callback calls and
  O(log n) hashes; a proof holds at most ``log`` (inclusion) or ``2 log`` (consistency)
  hashes.
- :func:`verify_inclusion` and :func:`verify_consistency`: O(log n) hashes, no storage.
- :class:`InMemoryTree` stores every complete subtree (2n hashes, 64 bytes per leaf) and
  answers the callback in O(1); :func:`root_from_leaf_hashes` is the plain O(n) fold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHash = Callable[[int, int], bytes]
"""``subtree_hash(start, end)``: the hash of the complete, aligned subtree of leaves
``[start, end)``. It is only ever called with ``end - start`` a power of two and
``start`` a multiple of it, for ranges inside the tree being proved."""


class ProofError(ValueError):
    """A proof does not verify, or a proof was asked for sizes that don't exist."""


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 hash of one leaf's data."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node from its two children."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_complete(start: int, end: int) -> bool:
    size = end - start
    return size > 0 and size & (size - 1) == 0 and start % size == 0


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes")


def range_hash(start: int, end: int, subtree_hash: SubtreeHash) -> bytes:
    """The Merkle tree hash of leaves ``[start, end)``, from complete subtree hashes.

    ``start`` must be a multiple of the smallest power of two at or above
    ``end - start`` (true of the whole tree, ``start == 0``, and of every range the
    RFC's recursion visits). The range is then a run of complete subtrees, largest
    first; the RFC's right-leaning shape means they fold from the right.
    """
    if start == end:
        return EMPTY_ROOT
    if not 0 <= start < end:
        raise ValueError(f"bad leaf range [{start}, {end})")
    size = end - start
    if start % (1 << (size - 1).bit_length()) != 0:
        raise ValueError(f"leaf range [{start}, {end}) is not a subtree of any tree")
    parts: list[bytes] = []
    pos = start
    for bit in range(size.bit_length() - 1, -1, -1):
        if size >> bit & 1:
            parts.append(subtree_hash(pos, pos + (1 << bit)))
            pos += 1 << bit
    acc = parts[-1]
    for part in reversed(parts[:-1]):
        acc = node_hash(part, acc)
    return acc


def root_hash(size: int, subtree_hash: SubtreeHash) -> bytes:
    """The root of the tree made of the first ``size`` leaves (O(log n) callbacks)."""
    if size < 0:
        raise ValueError("tree size can't be negative")
    return range_hash(0, size, subtree_hash)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """The root of the tree over ``hashes``, computed level by level (O(n) hashes)."""
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    # Pairing left to right and carrying an odd last node up unchanged builds exactly
    # the RFC's tree: its right edge is the only place a node lacks a sibling.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --- proof generation -------------------------------------------------------------------


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The audit path for leaf ``index`` in the tree of ``size`` leaves (RFC 6962 PATH).

    Hashes are ordered from the leaf's sibling up to the root's other child.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(range_hash(start + k, end, subtree_hash))
            end = start + k
        else:
            path.append(range_hash(start, start + k, subtree_hash))
            start += k
    path.reverse()  # collected top-down; the proof is read bottom-up
    return path


def consistency_proof(old_size: int, new_size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The proof that the tree of ``old_size`` leaves is a prefix of the one of ``new_size``.

    RFC 6962 SUBPROOF; empty when ``old_size`` is 0 or equal to ``new_size`` (there is
    nothing to prove), as transparency-dev/merkle does.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, m = 0, new_size, old_size
    whole_old_tree = True  # the RFC's flag b: the old root itself needs no proof hash
    while True:
        n = end - start
        if m == n:
            if not whole_old_tree:
                path.append(range_hash(start, end, subtree_hash))
            break
        k = _split(n)
        if m <= k:
            path.append(range_hash(start + k, end, subtree_hash))
            end = start + k
        else:
            path.append(range_hash(start, start + k, subtree_hash))
            start += k
            m -= k
            whole_old_tree = False
    path.reverse()
    return path


# --- proof verification (RFC 9162 2.1.3.2 and 2.1.4.2) ------------------------------------


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for leaf hash ``leaf`` at ``index`` of ``size``.

    Raises :class:`ProofError` when the proof can't be for that position (wrong length,
    index outside the tree).
    """
    _check_hash(leaf, "leaf hash")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof hash {i}")
        if sn == 0:
            raise ProofError(f"inclusion proof is too long for leaf {index} of {size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Climb past the levels where this node is the right edge's lone child.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof is too short for leaf {index} of {size}")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Raises :class:`ProofError` naming what failed.
    """
    _check_hash(root, "root hash")
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not lead to the root of tree size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``).

    Raises :class:`ProofError` naming what failed.
    """
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency proof hash {i}")
    if not 0 <= old_size <= new_size:
        raise ProofError(f"tree size went from {old_size} to {new_size}: a log never shrinks")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if old_size == 0:
        # Every tree extends the empty one; its root is fixed, so check it all the same.
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is wrong")
        return
    if not proof:
        raise ProofError(f"consistency proof from {old_size} to {new_size} is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree: its root is the proof's implicit first hash.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from {old_size} to {new_size} is too short")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")


# --- append-only state ------------------------------------------------------------------


class CompactRange:
    """The right edge of an append-only tree: one complete subtree root per set bit of size.

    This is all the state an appender needs: a new leaf merges with the subtrees of equal
    size at the end, like a binary carry, and the root folds the O(log n) remaining
    hashes. Rebuild it after a restart with :meth:`from_subtree_hash`.
    """

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []  # left to right, strictly decreasing sizes

    @classmethod
    def from_subtree_hash(cls, size: int, subtree_hash: SubtreeHash) -> CompactRange:
        """Load the range for ``size`` leaves from stored complete subtree hashes."""
        if size < 0:
            raise ValueError("tree size can't be negative")
        rng = cls()
        pos = 0
        for bit in range(size.bit_length() - 1, -1, -1):
            if size >> bit & 1:
                rng._hashes.append(subtree_hash(pos, pos + (1 << bit)))
                pos += 1 << bit
        rng._size = size
        return rng

    @property
    def size(self) -> int:
        """How many leaves the range covers."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The complete subtree roots, left to right."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the complete subtrees it finished.

        Each is ``(level, index, hash)`` for the subtree of leaves
        ``[index << level, (index + 1) << level)``, the leaf itself first (level 0).
        Store them and ``subtree_hash`` is a lookup by ``(level, start >> level)``.
        """
        _check_hash(leaf, "leaf hash")
        position = self._size
        done = [(0, position, leaf)]
        acc, carry, level = leaf, position, 0
        while carry & 1:
            acc = node_hash(self._hashes.pop(), acc)
            carry >>= 1
            level += 1
            done.append((level, position >> level, acc))
        self._hashes.append(acc)
        self._size += 1
        return done

    def root(self) -> bytes:
        """The root hash of the tree of :attr:`size` leaves."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc


class InMemoryTree:
    """A whole tree in RAM: every complete subtree hash, packed 32 bytes each per level.

    For tests, benchmarks and small logs. ``subtree_hash`` is O(1), so roots and proofs
    for any past size cost O(log n). Memory is about 64 bytes per leaf.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        """How many leaves the tree holds."""
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf: bytes) -> int:
        """Add one leaf hash; return its index."""
        _check_hash(leaf, "leaf hash")
        index = self.size
        self._levels[0] += leaf
        level, count = 0, index + 1
        while count % 2 == 0:
            row = self._levels[level]
            left = row[-2 * HASH_SIZE : -HASH_SIZE]
            right = row[-HASH_SIZE:]
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level + 1] += node_hash(bytes(left), bytes(right))
            level += 1
            count //= 2
        return index

    def append_data(self, data: bytes) -> int:
        """Hash ``data`` as a leaf and add it; return its index."""
        return self.append(leaf_hash(data))

    def leaf_hash(self, index: int) -> bytes:
        """The stored hash of leaf ``index``."""
        return self.subtree_hash(index, index + 1)

    def subtree_hash(self, start: int, end: int) -> bytes:
        """The hash of the complete, aligned subtree ``[start, end)`` (see :data:`SubtreeHash`)."""
        if not _is_complete(start, end) or end > self.size:
            raise ValueError(f"[{start}, {end}) is not a complete subtree of this tree")
        level = (end - start).bit_length() - 1
        offset = (start >> level) * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all of them)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return root_hash(size, self.subtree_hash)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        size = self.size if size is None else size
        if size > self.size:
            raise ProofError(f"tree size {size} is beyond this tree's {self.size}")
        return inclusion_proof(index, size, self.subtree_hash)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The consistency proof from ``old_size`` to ``new_size`` (default: all)."""
        new_size = self.size if new_size is None else new_size
        if new_size > self.size:
            raise ProofError(f"tree size {new_size} is beyond this tree's {self.size}")
        return consistency_proof(old_size, new_size, self.subtree_hash)
