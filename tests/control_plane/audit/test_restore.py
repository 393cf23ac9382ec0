"""A control plane restored from an older backup: it refuses to sign below a tree head it
handed out before, collects the lost records again from the nodes, puts them back at
their own indexes, and then signs a tree that extends every tree head auditors hold.

The restore is a savepoint rolled back (the database as the backup left it); the node is
the contract-following fake, which keeps placements and the tree head from its acks.
The drill with real PostgreSQL and a real node is ``test_restore_drill``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction

from control_plane.audit.ledger import LedgerBehind, LedgerForked, append, consistency
from control_plane.audit.models import CollectionState, Receipt, Statement, TreeHead
from control_plane.audit.services import collect_node, ledger_status
from control_plane.audit.witness import read_witness_file
from control_plane.core.signing import signer
from control_plane.fleet.models import Node
from shared.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from shared.merkle import verify_consistency
from shared.trust import LOG
from tests.control_plane.audit.conftest import verified

pytestmark = pytest.mark.django_db


@pytest.fixture
def witness(monkeypatch, tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "ledger-witness"
    monkeypatch.setattr(settings.SANCTUM.ledger, "witness_file", path)
    return path


@pytest.fixture
def committed(django_capture_on_commit_callbacks) -> Callable[[], object]:
    """Run what commits for real would run after (the witness file is written then)."""

    @contextmanager
    def run() -> Iterator[None]:
        with django_capture_on_commit_callbacks(execute=True):
            yield

    return run


@contextmanager
def backup_then_restore() -> Iterator[None]:
    """What happens inside is lost: the database goes back to the backup taken before."""
    point = transaction.savepoint()
    yield
    transaction.savepoint_rollback(point)


def collect(node: Node, committed) -> object:
    with committed():
        return collect_node(Node.objects.get(pk=node.pk))


def head_of(size: int) -> TreeHead:
    return TreeHead.objects.get(size=size)


def test_a_restored_ledger_refuses_to_sign_recollects_and_extends_the_same_tree(
    usage_node, witness, committed, check_ledger, log_public_key
):
    fake, node = usage_node
    for _ in range(3):
        fake.add_usage("acme")
    assert collect(node, committed).tree_size == 3
    with backup_then_restore():
        for i in range(3):
            fake.add_usage("acme", first_token_ms=(120 + i, 40))
        assert collect(node, committed).tree_size == 6
        auditor_kept = head_of(6).checkpoint  # an auditor downloads the tree head
        lost = sorted(Receipt.objects.filter(log_index__gte=3).values_list("node_jws", flat=True))
    assert read_witness_file().size == 6 and fake.tree_size == 6  # kept beyond the database
    assert Receipt.objects.count() == 3 and TreeHead.objects.latest_head().size == 3

    # Behind: nothing is signed, whatever is offered.
    status = ledger_status()
    assert status.behind == 3 and "ledger behind: 3 records to re-collect" in status.problem
    with pytest.raises(LedgerBehind):
        append(verified(fake, 1))
    assert TreeHead.objects.latest_head().size == 3

    # Collection puts the lost records back first, then logs the new one after them.
    new = fake.add_usage("acme")[1]
    outcome = collect(node, committed)

    assert outcome.error == "" and outcome.tree_size == 7  # 3 + 3 re-collected + 1 new
    assert ledger_status().problem == ""
    receipts = list(Receipt.objects.order_by("log_index"))
    assert sorted(r.node_jws for r in receipts[3:6]) == lost
    # rebuilt from the signed records, columns and all (the charts read the turn times)
    assert [r.first_token_ms for r in receipts[3:6]] == [[120, 40], [121, 40], [122, 40]]
    assert [r.first_token_ms for r in receipts[:3]] == [None, None, None]
    assert receipts[6].node_jws == new
    assert len({r.record_id for r in receipts}) == len(receipts) == 7  # each once
    assert fake.pending == []
    check_ledger()
    # The tree at 6 has the root the auditor holds, and the new head extends it.
    old = open_checkpoint(auditor_kept, log_public_key)
    latest = TreeHead.objects.latest_head()
    assert head_of(6).checkpoint == auditor_kept  # signed again: the very same note
    verify_consistency(  # raises ProofError if the old tree is not a prefix of the new
        old.size, latest.size, old.root_hash, bytes(latest.root_hash), consistency(6, latest.size)
    )
    assert read_witness_file().size == 7 and fake.tree_size == 7


def test_statements_a_restore_lost_are_put_back_at_their_indexes(
    usage_node, witness, committed, check_ledger
):
    fake, node = usage_node
    fake.statements = True
    for _ in range(2):
        fake.add_usage("acme")
    first = collect(node, committed)
    assert (first.statement_index, first.tree_size) == (0, 3)  # the statement, then records
    with backup_then_restore():
        fake.config_version = 2  # the node applied a new config: new claims
        fake.add_usage("acme")
        outcome = collect(node, committed)
        assert (outcome.statement_index, outcome.tree_size) == (3, 5)
        lost = Statement.objects.get(log_index=3).node_jws
    assert Statement.objects.count() == 1 and TreeHead.objects.latest_head().size == 3
    assert [p["placement"]["log_index"] for p in fake.placed_statements] == [0, 3]

    fake.add_usage("acme")
    again = collect(node, committed)
    assert again.error == "" and again.tree_size == 6  # both put back, then the new record
    assert again.statement_index == 3  # its claims were logged before: not logged twice
    assert Statement.objects.get(log_index=3).node_jws == lost
    assert list(Receipt.objects.values_list("log_index", flat=True)) == [1, 2, 4, 5]
    assert ledger_status().problem == ""
    check_ledger()


def test_the_nodes_alone_catch_a_restore_without_a_witness_file(
    usage_node, committed, check_ledger, log_public_key
):
    assert settings.SANCTUM.ledger.witness_file is None
    fake, node = usage_node
    fake.add_usage("acme")
    collect(node, committed)
    with backup_then_restore():
        for _ in range(2):
            fake.add_usage("acme")
        collect(node, committed)
        auditor_kept = head_of(3).checkpoint
    assert CollectionState.objects.get(node=node).tree_head == ""  # the restored copy
    fake.add_usage("acme")

    outcome = collect(node, committed)  # the node's usage page shows the tree head of 3

    assert outcome.error == "" and outcome.tree_size == 4
    assert head_of(3).checkpoint == auditor_kept
    check_ledger()


def test_a_gap_no_node_can_fill_keeps_the_ledger_refusing_and_says_so(
    usage_node, witness, committed
):
    fake, node = usage_node
    fake.add_usage("acme")
    collect(node, committed)
    with backup_then_restore():
        for _ in range(2):
            fake.add_usage("acme")
        collect(node, committed)
    fake.forget({2})  # past the node's receipt retention: index 1 is gone for good
    fake.add_usage("acme")

    outcome = collect(node, committed)

    assert "ledger behind: 2 records to re-collect" in outcome.error
    assert "no node holds the record at ledger index 1" in outcome.error
    assert TreeHead.objects.latest_head().size == 1  # nothing signed
    assert Receipt.objects.count() == 1
    assert len(fake.pending) == 1  # the new record waits, unacknowledged
    assert "ledger behind" in CollectionState.objects.get(node=node).last_error


def test_a_witnessed_tree_head_with_another_root_is_a_fork_never_signed_over(
    usage_node, witness, committed
):
    fake, node = usage_node
    for _ in range(2):
        fake.add_usage("acme")
    collect(node, committed)
    other = Checkpoint(origin=settings.SANCTUM.ledger.origin, size=1, root_hash=bytes(32))
    witness.write_text(
        sign_checkpoint(other, signer(LOG), name=settings.SANCTUM.ledger.note_key_name)
    )

    assert ledger_status().problem.startswith("ledger forked")
    with pytest.raises(LedgerForked):
        append(verified(fake, 1))
    assert TreeHead.objects.latest_head().size == 2


def test_a_tree_head_not_signed_by_the_log_key_is_not_believed(usage_node, witness, committed):
    from shared.keys import generate_private_key

    fake, node = usage_node
    fake.add_usage("acme")
    forged = Checkpoint(origin=settings.SANCTUM.ledger.origin, size=50, root_hash=bytes(32))
    fake.tree_head = sign_checkpoint(
        forged, generate_private_key(), name=settings.SANCTUM.ledger.note_key_name
    )

    outcome = collect(node, committed)  # a node can't make the ledger refuse with a forgery

    assert outcome.error == "" and outcome.tree_size == 1
    witness.write_text(fake.tree_head)
    assert "does not verify" in ledger_status().problem  # the witness file can, loudly


def test_a_log_key_rotation_does_not_make_the_kept_tree_heads_strangers(
    fake_node_factory, witness, committed, tmp_path, monkeypatch
):
    from control_plane.core import signing

    monkeypatch.setattr(settings.SANCTUM, "keyring", tmp_path / "keyring")
    signing.keyring.cache_clear()
    try:
        fake, node = fake_node_factory("n1")  # trusting this keyring's management key
        fake.add_usage("acme")
        collect(node, committed)
        old = read_witness_file()
        signing.keyring().rotate(LOG)  # a log key rotates in one step: the new one signs

        fake.add_usage("acme")
        outcome = collect(node, committed)

        assert outcome.error == "" and outcome.tree_size == 2
        assert old is not None and read_witness_file().size == 2
    finally:
        signing.keyring.cache_clear()


def test_a_control_plane_started_on_a_restored_database_asks_every_node_first(
    fake_node_factory, committed, check_ledger, monkeypatch
):
    """No witness file, two nodes: the one collected first after the restore holds an
    older tree head than the other. The new process asks both before it logs anything."""
    from control_plane.audit import services

    fake1, node1 = fake_node_factory("n1")
    fake2, node2 = fake_node_factory("n2")
    fake1.add_usage("acme")
    collect(node1, committed)
    with backup_then_restore():
        for _ in range(2):
            fake2.add_usage("acme")
        collect(node2, committed)  # only n2 was handed the tree head of 3
        kept = head_of(3).checkpoint
    assert fake1.tree_size == 1 and fake2.tree_size == 3
    monkeypatch.setattr(services, "_heads_asked", False)  # a new process
    fake1.add_usage("acme")

    outcome = collect(node1, committed)

    assert outcome.error == "" and outcome.tree_size == 4  # n2's two put back first
    assert head_of(3).checkpoint == kept
    assert [r.node for r in Receipt.objects.order_by("log_index")] == ["n1", "n2", "n2", "n1"]
    assert collect(node2, committed).error == ""
    check_ledger()


def test_the_admin_says_the_ledger_is_behind(usage_node, witness, committed, client, admin_user):
    fake, node = usage_node
    with backup_then_restore():
        for _ in range(2):
            fake.add_usage("acme")
        collect(node, committed)
    client.force_login(admin_user)

    page = client.get("/admin/audit/collectionstate/")

    assert page.status_code == 200
    assert "Ledger behind: 2 records to re-collect" in page.content.decode()  # capitalised


def test_a_node_that_claims_another_nodes_place_is_left_out_not_obeyed(
    fake_node_factory, witness, committed, check_ledger
):
    """A compromised node hands back one of its own records placed at an index another
    node's record holds, with that record's leaf hash: its record does not hash to it, so
    it is left out, and the honest node's records fill the gap."""
    honest, node = fake_node_factory("n-honest")
    liar, _ = fake_node_factory("n-liar")
    for _ in range(2):
        honest.add_usage("acme")
    collect(node, committed)
    with backup_then_restore():
        for _ in range(2):
            honest.add_usage("acme")
        collect(node, committed)
    assert ledger_status().behind == 2

    taken = min(
        honest.placements.values(), key=lambda p: p["log_index"] if p["log_index"] >= 2 else 99
    )
    record, _ = liar.add_usage("acme")
    liar.placements[record.record_id] = {**taken, "record_id": record.record_id}

    collect(node, committed)

    assert ledger_status().problem == ""
    assert Receipt.objects.count() == 4
    assert not Receipt.objects.filter(record_id=record.record_id).exists()
    check_ledger()
