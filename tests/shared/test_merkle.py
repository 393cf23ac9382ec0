"""RFC 6962 / 9162 Merkle proofs: published vectors, every size up to 64, edge cases."""

from __future__ import annotations

import hashlib

import pytest

from shared import merkle
from shared.merkle import (
    EMPTY_ROOT,
    CompactRange,
    InMemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# Test vectors from transparency-dev/merkle, proof/verify_test.go (the RFC 6962 reference
# data Certificate Transparency has used since certificate-transparency/cpp): the eight
# leaves, the roots of the trees of their first 1..8 leaves, and known proofs.
LEAVES = [h(x) for x in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                         "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
ROOTS = [h(x) for x in [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]]  # fmt: skip
# (leaf number counted from 1, tree size, proof)
INCLUSION_VECTORS = [
    (1, 1, []),
    (1, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (3, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (2, 5, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]  # fmt: skip
# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (1, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]  # fmt: skip
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


@pytest.fixture(scope="module")
def vector_tree() -> InMemoryTree:
    return InMemoryTree(leaf_hash(data) for data in LEAVES)


# --- a reference implementation: the RFC 6962 definitions, written as recursion --------


def ref_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(ref_mth(leaves[:k]), ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], complete), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


# --- published vectors ------------------------------------------------------------------


def test_hashing_matches_the_published_roots(vector_tree: InMemoryTree) -> None:
    assert h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == EMPTY_ROOT
    assert leaf_hash(b"") == ROOTS[0]
    for size in range(1, 9):
        assert vector_tree.root(size) == ROOTS[size - 1], size
        assert root_from_leaf_hashes([leaf_hash(d) for d in LEAVES[:size]]) == ROOTS[size - 1]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION_VECTORS)
def test_inclusion_vectors_generate_and_verify(
    vector_tree: InMemoryTree, leaf: int, size: int, proof: list[bytes]
) -> None:
    index = leaf - 1
    assert vector_tree.inclusion_proof(index, size) == proof
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION_VECTORS)
def test_corrupted_inclusion_vectors_fail(leaf: int, size: int, proof: list[bytes]) -> None:
    # The probes transparency-dev/merkle runs against each known-good proof.
    index, root, lh = leaf - 1, ROOTS[size - 1], leaf_hash(LEAVES[leaf - 1])
    probes = [
        (index - 1, size, lh, proof, root),
        (index + 1, size, lh, proof, root),
        (index ^ 2, size, lh, proof, root),
        (index, size * 2, lh, proof, root),
        (index, size // 2, lh, proof, root),
        (index, size, SOME_HASH, proof, root),
        (index, size, lh, proof, EMPTY_ROOT),
        (index, size, lh, proof, SOME_HASH),
        (index, size, lh, [*proof, root], root),
        (index, size, lh, [root, *proof], root),
        (index, size, lh, [*proof, b""], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((index, size, lh, bad, root))
    if proof:
        probes.append((index, size, lh, proof[:-1], root))
    if len(proof) > 1:
        probes.append((index, size, lh, [proof[0], SOME_HASH, *proof[1:]], root))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_inclusion(probe[2], probe[0], probe[1], probe[3], probe[4])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_consistency_vectors_generate_and_verify(
    vector_tree: InMemoryTree, old: int, new: int, proof: list[bytes]
) -> None:
    assert vector_tree.consistency_proof(old, new) == proof
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]])
def test_corrupted_consistency_vectors_fail(old: int, new: int, proof: list[bytes]) -> None:
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, SOME_HASH, r2, proof),
        (old, new, r1, SOME_HASH, proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((old, new, r1, r2, bad))
    for o, n, a, b, p in probes:
        if (o, n, a, b, p) == (old, new, r1, r2, proof):
            continue
        with pytest.raises(ProofError):
            verify_consistency(o, n, a, b, p)


# --- every size up to 64 against the reference ------------------------------------------


MAX_SIZE = 64
DATA = [f"leaf {i}".encode() for i in range(MAX_SIZE)]


@pytest.fixture(scope="module")
def big_tree() -> InMemoryTree:
    return InMemoryTree(leaf_hash(d) for d in DATA)


def test_roots_of_every_size_match_the_definition(big_tree: InMemoryTree) -> None:
    rng = CompactRange()
    assert rng.root() == EMPTY_ROOT == big_tree.root(0)
    for size in range(1, MAX_SIZE + 1):
        rng.append(leaf_hash(DATA[size - 1]))
        want = ref_mth(DATA[:size])
        assert big_tree.root(size) == want, size
        assert rng.root() == want, size
        assert root_from_leaf_hashes([leaf_hash(d) for d in DATA[:size]]) == want


def test_inclusion_proofs_of_every_leaf_of_every_size(big_tree: InMemoryTree) -> None:
    for size in range(1, MAX_SIZE + 1):
        root = big_tree.root(size)
        for index in range(size):
            proof = big_tree.inclusion_proof(index, size)
            assert proof == ref_path(index, DATA[:size]), (index, size)
            verify_inclusion(leaf_hash(DATA[index]), index, size, proof, root)
            # The same proof never passes for another position, nor for a tree of double
            # or half the size. (A size off by one can share the path's shape: RFC 9162
            # binds size to root only through the signed tree head, which signs both.)
            wrong = [(index + 1, size), (index - 1, size), (index ^ 2, size)]
            wrong += [(index, size * 2), (index, size // 2)]
            for wrong_index, wrong_size in wrong:
                if 0 <= wrong_index < wrong_size and (wrong_index, wrong_size) != (index, size):
                    with pytest.raises(ProofError):
                        verify_inclusion(
                            leaf_hash(DATA[index]), wrong_index, wrong_size, proof, root
                        )


def test_consistency_proofs_between_every_pair_of_sizes(big_tree: InMemoryTree) -> None:
    roots = [big_tree.root(s) for s in range(MAX_SIZE + 1)]
    for new in range(MAX_SIZE + 1):
        for old in range(new + 1):
            proof = big_tree.consistency_proof(old, new)
            want = [] if old in (0, new) else ref_subproof(old, DATA[:new], True)
            assert proof == want, (old, new)
            verify_consistency(old, new, roots[old], roots[new], proof)
            if 0 < old < new:
                with pytest.raises(ProofError):
                    verify_consistency(old, new, roots[old - 1], roots[new], proof)
                with pytest.raises(ProofError):
                    verify_consistency(old, new, roots[old], roots[new - 1], proof)


def test_a_rewritten_log_is_not_consistent_with_its_past() -> None:
    original = InMemoryTree(leaf_hash(d) for d in DATA[:10])
    reordered = DATA[:10]
    reordered[3], reordered[4] = reordered[4], reordered[3]
    rewritten = InMemoryTree(leaf_hash(d) for d in [*reordered, *DATA[10:16]])
    proof = rewritten.consistency_proof(10, 16)
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(10, 16, original.root(), rewritten.root(), proof)


# --- the callback design: compact range, stored nodes -----------------------------------


def test_compact_range_reports_the_nodes_a_store_needs() -> None:
    # A store that only ever learns nodes from append() can answer every proof.
    stored: dict[tuple[int, int], bytes] = {}
    rng = CompactRange()
    reference = InMemoryTree()
    for d in DATA[:37]:
        for level, index, value in rng.append(leaf_hash(d)):
            assert (level, index) not in stored  # each node is final when reported
            stored[(level, index)] = value
        reference.append_data(d)

    def lookup(start: int, end: int) -> bytes:
        level = (end - start).bit_length() - 1
        return stored[(level, start >> level)]

    assert merkle.root_hash(37, lookup) == rng.root() == reference.root()
    for index in range(37):
        assert inclusion_proof(index, 37, lookup) == reference.inclusion_proof(index)
    for old in range(38):
        assert consistency_proof(old, 37, lookup) == reference.consistency_proof(old)
    # After a restart the range is rebuilt from stored nodes in O(log n) lookups.
    calls: list[tuple[int, int]] = []

    def counting(start: int, end: int) -> bytes:
        calls.append((start, end))
        return lookup(start, end)

    restored = CompactRange.from_subtree_hash(37, counting)
    assert restored.hashes == rng.hashes and restored.root() == rng.root()
    assert calls == [(0, 32), (32, 36), (36, 37)]


def test_proofs_touch_only_log_n_stored_nodes() -> None:
    size = 1_000_003
    calls = []

    def fake(start: int, end: int) -> bytes:
        calls.append((start, end))
        return hashlib.sha256(f"{start}:{end}".encode()).digest()

    proof = inclusion_proof(777_777, size, fake)
    assert len(proof) <= 21 and len(calls) <= 2 * 21
    calls.clear()
    assert len(consistency_proof(123_457, size, fake)) <= 2 * 21 and len(calls) <= 3 * 21


def test_empty_and_single_leaf_trees() -> None:
    single = InMemoryTree([leaf_hash(b"only")])
    assert single.root() == leaf_hash(b"only")
    assert single.inclusion_proof(0) == []
    verify_inclusion(leaf_hash(b"only"), 0, 1, [], single.root())
    with pytest.raises(ProofError, match="outside a tree of 0"):
        verify_inclusion(leaf_hash(b"x"), 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="outside a tree of 1"):
        single.inclusion_proof(1)
    assert InMemoryTree().consistency_proof(0) == []
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 1, EMPTY_ROOT, single.root(), [])
    verify_consistency(1, 1, single.root(), single.root(), [])


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof", "message"),
    [
        (2, 1, ROOTS[1], ROOTS[0], [], "never shrinks"),
        (1, 1, ROOTS[0], ROOTS[1], [], "two different roots"),
        (1, 1, ROOTS[0], ROOTS[0], [ROOTS[0]], "must be empty"),
        (0, 1, SOME_HASH, ROOTS[0], [], "empty tree is wrong"),
        (0, 1, EMPTY_ROOT, ROOTS[0], [ROOTS[0]], "must be empty"),
        (1, 2, ROOTS[0], ROOTS[1], [], "is empty"),
        (1, 2, ROOTS[0], ROOTS[1], [b"short"], "32 bytes"),
    ],
)
def test_consistency_edge_cases_are_refused_by_name(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes], message: str
) -> None:
    with pytest.raises(ProofError, match=message):
        verify_consistency(old, new, old_root, new_root, proof)


def test_proof_requests_outside_the_tree_are_refused(big_tree: InMemoryTree) -> None:
    with pytest.raises(ProofError):
        big_tree.inclusion_proof(-1)
    with pytest.raises(ProofError):
        big_tree.inclusion_proof(0, MAX_SIZE + 1)
    with pytest.raises(ProofError):
        big_tree.consistency_proof(5, 4)
    with pytest.raises(ValueError, match="not a complete subtree"):
        big_tree.subtree_hash(1, 3)
