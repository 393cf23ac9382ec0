"""Collection from a node: verify, log once, sign the tree head, then acknowledge.

The node is the contract-following fake (``tests/control_plane/fakes.py``); the fault
test (``test_fault``) collects from real data-plane processes.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from control_plane.audit.models import CollectionState, Receipt, RefusedRecord, TreeHead
from control_plane.audit.services import collect_fleet, collect_node
from shared.keys import b64url, b64url_decode, generate_private_key, public_pem
from shared.signed_request import ReplayGuard, SignedRequestVerifier
from tests.control_plane.factories import NodeFactory

pytestmark = pytest.mark.django_db


def test_collection_logs_each_record_signs_a_tree_head_and_acknowledges(usage_node, check_ledger):
    fake, node = usage_node
    held = [fake.add_usage("acme")[1] for _ in range(3)]

    outcome = collect_node(node)

    assert (outcome.fetched, outcome.appended, outcome.acked, outcome.error) == (3, 3, 3, "")
    assert outcome.tree_size == 3 and outcome.cursor == 3
    assert sorted(Receipt.objects.values_list("node_jws", flat=True)) == sorted(held)
    assert fake.pending == []
    assert CollectionState.objects.get(node=node).cursor == 3
    check_ledger()
    # the next run asks for what comes after the stored cursor, and finds nothing new
    again = collect_node(node)
    assert (again.fetched, again.appended, again.tree_size) == (0, 0, None)
    assert TreeHead.objects.count() == 1


def test_the_same_records_offered_twice_give_one_receipt_each(usage_node, check_ledger):
    """A crash between the commit and the acknowledgement: the node offers them again."""
    fake, node = usage_node
    for _ in range(4):
        fake.add_usage("acme")
    fake.ack_failures = 1  # the acknowledgement is lost

    first = collect_node(node)

    assert first.appended == 4 and "HTTP 503" in first.error
    assert len(fake.pending) == 4  # still held by the node...
    assert CollectionState.objects.get(node=node).cursor == 0  # ...and asked for again

    second = collect_node(node)

    assert (second.fetched, second.appended, second.already, second.acked) == (4, 0, 4, 4)
    assert second.error == "" and fake.pending == []
    assert Receipt.objects.count() == 4 and TreeHead.objects.count() == 1
    # the stored cursor forgotten (a restored database): still one receipt each
    CollectionState.objects.filter(node=node).update(cursor=0)
    fake.acked.clear()
    third = collect_node(node)
    assert (third.already, third.appended) == (4, 0)
    assert Receipt.objects.count() == 4
    check_ledger()


def test_a_bad_node_signature_is_refused_reported_and_never_stored(usage_node, check_ledger):
    fake, node = usage_node
    good_1, _ = fake.add_usage("acme")
    forged, _ = fake.add_usage("acme", key=generate_private_key())  # not the node's key
    other_node, _ = fake.add_usage("acme", node_id="someone-else")  # signs for another node
    # the node's own signature over a record whose counts were changed afterwards
    edited, token = fake.add_usage("acme", prompt_tokens=5)
    fake.acked.add(fake.last_cursor)
    header, payload, signature = token.split(".")
    changed = b64url(b64url_decode(payload).replace(b'"prompt_tokens":5', b'"prompt_tokens":1'))
    fake.add_signed(edited.record_id, f"{header}.{changed}.{signature}")
    good_2, _ = fake.add_usage("acme")

    outcome = collect_node(node)

    assert (outcome.appended, outcome.refused) == (2, 3)
    logged = {str(r) for r in Receipt.objects.values_list("record_id", flat=True)}
    assert logged == {good_1.record_id, good_2.record_id}
    refused = {r.record_id: r for r in RefusedRecord.objects.all()}
    assert set(refused) == {forged.record_id, other_node.record_id, edited.record_id}
    assert "signed by an untrusted key" in refused[forged.record_id].reason
    assert "no trusted key" in refused[other_node.record_id].reason
    assert "signature" in refused[edited.record_id].reason
    # the good ones are acknowledged (the first by cursor, the last by id); the refused
    # stay on the node, and the stored cursor stops before the first of them
    assert fake.pending == [2, 3, 5]
    state = CollectionState.objects.get(node=node)
    assert (state.cursor, state.refused_pending) == (1, 3)

    again = collect_node(node)

    assert (again.fetched, again.appended, again.refused) == (3, 0, 3)
    assert Receipt.objects.count() == 2
    assert RefusedRecord.objects.get(record_id=forged.record_id).times_seen == 2
    check_ledger()


def test_a_record_refused_for_an_unregistered_key_is_logged_once_the_key_is(usage_node):
    fake, node = usage_node
    new_key = generate_private_key()
    record, _ = fake.add_usage("acme", key=new_key)  # the node's key was replaced
    assert collect_node(node).refused == 1

    node.public_key = public_pem(new_key.public_key()).decode()
    node.save()
    outcome = collect_node(node)

    assert (outcome.appended, outcome.refused) == (1, 0)
    assert RefusedRecord.objects.get(record_id=record.record_id).resolved_at is not None
    assert fake.pending == []


def test_pages_are_followed_to_the_end(usage_node, monkeypatch, check_ledger):
    fake, node = usage_node
    monkeypatch.setattr(settings.SANCTUM.ledger, "page_size", 2)
    for _ in range(7):
        fake.add_usage("acme")

    outcome = collect_node(node)

    assert (outcome.fetched, outcome.appended, outcome.cursor) == (7, 7, 7)
    assert fake.usage_requests == 4  # pages of 2, 2, 2, 1
    assert TreeHead.objects.count() == 4  # one signed tree head per appended page
    check_ledger()


def test_an_unreachable_node_or_one_that_distrusts_us_is_an_error_not_a_crash(
    usage_node, fake_node_factory
):
    fake, node = usage_node
    fake.add_usage("acme")
    fake.stop()

    down = collect_node(node)

    assert "node unreachable" in down.error
    assert CollectionState.objects.get(node=node).last_error == down.error

    other, other_node = fake_node_factory("n2")
    other.verifier = SignedRequestVerifier(
        lambda: [generate_private_key().public_key()], "n2", ReplayGuard()
    )
    distrust = collect_node(other_node)
    assert "HTTP 401" in distrust.error and "trust this control plane's key" in distrust.error
    assert Receipt.objects.count() == 0


def test_a_node_answering_under_another_name_is_not_collected(usage_node):
    fake, node = usage_node
    fake.add_usage("acme")
    fake.name = "impostor"

    outcome = collect_node(node)

    assert "says it is 'impostor'" in outcome.error
    assert Receipt.objects.count() == 0


def test_collect_fleet_covers_every_enabled_node(fake_node_factory):
    fakes = [fake_node_factory(name) for name in ("a1", "a2")]
    NodeFactory(name="off", enabled=False)
    for fake, _ in fakes:
        fake.add_usage("acme")

    outcomes = collect_fleet()

    assert sorted(o.node for o in outcomes) == ["a1", "a2"]
    assert Receipt.objects.count() == 2
