"""Fixtures for the audit tests: a fake node with usage records, and the ledger's key."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from control_plane.audit.ledger import Verified, statement_entry
from control_plane.audit.models import Receipt, Statement, TreeHead
from control_plane.core.signing import signer
from control_plane.fleet.models import Node
from shared.checkpoint import open_checkpoint
from shared.keys import key_id, public_pem
from shared.merkle import InMemoryTree
from shared.trust import LOG
from tests.control_plane.fakes import FakeNode


@pytest.fixture
def log_public_key():
    return signer(LOG).public_key()


@pytest.fixture
def usage_node(fake_node_factory) -> tuple[FakeNode, Node]:
    """A fake node, registered with the key it signs usage records with."""
    return fake_node_factory("n1")


def verified(fake: FakeNode, count: int, client_id: str = "acme", **fields) -> list[Verified]:
    """Records signed by ``fake``'s key, verified as collection would (not in its outbox)."""
    from shared.usage import open_usage_record

    out = []
    public = fake.node_key.public_key()
    for _ in range(count):
        _, token = fake.add_usage(client_id, **fields)
        fake.acked |= set(fake.outbox)  # only the signed record is wanted here
        record = open_usage_record(token, {fake.name: public})
        out.append(
            Verified(
                jws=token,
                record=record,
                node_key_id=key_id(public),
                node_key_pem=public_pem(public).decode(),
            )
        )
    return out


def assert_ledger_consistent(log_key) -> None:
    """Indexes of the leaves (receipts and statements) are 0..n-1, each tree head is
    signed and is the root of its prefix, each leaf hash is its entry's."""
    leaves = sorted(
        [
            *((r.log_index, bytes(r.leaf_hash)) for r in Receipt.objects.all()),
            *((s.log_index, bytes(s.leaf_hash)) for s in Statement.objects.all()),
        ]
    )
    assert [index for index, _ in leaves] == list(range(len(leaves)))
    for statement in Statement.objects.all():
        statement_entry(statement)  # raises unless it rebuilds to its leaf hash
    tree = InMemoryTree(leaf for _, leaf in leaves)
    for head in TreeHead.objects.order_by("size"):
        checkpoint = open_checkpoint(head.checkpoint, log_key)
        assert checkpoint.size == head.size
        assert checkpoint.root_hash == bytes(head.root_hash) == tree.root(head.size)


@pytest.fixture
def check_ledger(log_public_key) -> Callable[[], None]:
    return lambda: assert_ledger_consistent(log_public_key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
