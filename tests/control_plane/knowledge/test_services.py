"""Loading and deleting knowledge bases: what reaches the nodes, what the catalog and the
change trail keep (metadata only), and how a node that is down shows."""

from __future__ import annotations

import hashlib
import json

import pytest

from control_plane.changes.choices import ChangeAction
from control_plane.changes.models import ObjectChange
from control_plane.fleet.models import ConfigRelease
from control_plane.fleet.rollout import build_bundle
from control_plane.knowledge.models import DocumentCopy, KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.services import (
    NoServingNodes,
    UploadedDocument,
    create_knowledge_base,
    delete_document,
    delete_knowledge_base,
    load_documents,
)
from tests.canary import new_marker
from tests.control_plane.factories import NodeFactory


def _doc(name: str, text: str) -> UploadedDocument:
    return UploadedDocument(name, text.encode())


def test_creating_a_knowledge_base_rolls_out_so_the_config_lists_it(
    acme, kb_node_factory, on_commit
):
    with on_commit():  # registering the node releases to it once, as any change does
        _, node = kb_node_factory()
    with on_commit():
        create_knowledge_base(acme, "handbook")

    release = ConfigRelease.objects.filter(node=node).order_by("-version").first()
    listed = {c["id"]: c["knowledge_bases"] for c in release.document["clients"]}
    assert listed["acme"] == ["handbook"]
    with on_commit():
        create_knowledge_base(acme, "cases")
    assert build_bundle(node, 99).clients[0].knowledge_bases == ("cases", "handbook")


def test_a_load_reaches_every_node_and_the_catalog_keeps_metadata_only(acme, kb_node_factory):
    marker = new_marker()
    one, _ = kb_node_factory("node-a")
    two, _ = kb_node_factory("node-b")
    kb = create_knowledge_base(acme, "handbook")
    text = f"The vault code is {marker}."

    report = load_documents(kb, [_doc("sub/vault.md", text), _doc("photo.png", "png")])

    assert report.complete
    assert [n.as_dict() for n in report.nodes] == [
        {"node": "node-a", "status": "ok"},
        {"node": "node-b", "status": "ok"},
    ]
    vault, photo = report.results
    assert (vault.status, vault.chunks, vault.nodes) == (
        "ingested",
        1,
        {"node-a": "ingested", "node-b": "ingested"},
    )
    assert (photo.status, photo.reason) == ("skipped", "unsupported file type (.png)")
    for fake in (one, two):
        assert fake.last_bytes["sub/vault.md"] == text.encode()  # the bytes as sent
    document = KnowledgeDocument.objects.get()  # the refused file is not in the catalog
    assert (document.name, document.bytes, document.chunks) == ("sub/vault.md", len(text), 1)
    assert document.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert sorted(DocumentCopy.objects.values_list("node__name", "status")) == [
        ("node-a", "loaded"),
        ("node-b", "loaded"),
    ]
    change = ObjectChange.objects.get(action=ChangeAction.LOAD)
    assert change.object_repr == "acme/handbook/sub/vault.md"
    assert change.postchange_data["bytes"] == len(text)
    assert "sha256" not in change.postchange_data
    every_row = json.dumps(list(ObjectChange.objects.values()), default=str) + json.dumps(
        list(KnowledgeDocument.objects.values()), default=str
    )
    assert marker not in every_row


def test_loading_the_same_file_again_is_unchanged_and_still_in_the_trail(acme, kb_node_factory):
    kb_node_factory()
    kb = create_knowledge_base(acme, "handbook")
    load_documents(kb, [_doc("a.md", "Alpha.")])
    again = load_documents(kb, [_doc("a.md", "Alpha."), _doc("a.md", "Second copy.")])

    assert [(r.name, r.status, r.reason) for r in again.results] == [
        ("a.md", "unchanged", ""),
        ("a.md", "skipped", "same name as an earlier file"),
    ]
    assert ObjectChange.objects.filter(action=ChangeAction.LOAD).count() == 2


def test_files_go_in_batches_within_the_nodes_request_limit(acme, kb_node_factory):
    fake, _ = kb_node_factory(max_request_bytes=20_000)
    kb = create_knowledge_base(acme, "big")
    files = [_doc(f"f{i}.txt", "x" * 4_000) for i in range(8)]
    too_big = _doc("huge.txt", "y" * 30_000)

    report = load_documents(kb, [*files, too_big])

    assert len(fake.ingest_requests) > 1  # 8 files of 4 kB don't fit one 20 kB request
    assert sorted(n for batch in fake.ingest_requests for n in batch) == sorted(
        f.name for f in files
    )
    assert report.results[-1].status == "skipped"
    assert report.results[-1].reason.startswith("too large (30000 bytes")


def test_a_node_that_is_down_is_reported_and_the_others_load(acme, kb_node_factory):
    up, _ = kb_node_factory("node-a")
    down, _ = kb_node_factory("node-b")
    down.stop()
    kb = create_knowledge_base(acme, "handbook")

    report = load_documents(kb, [_doc("a.md", "Alpha.")])

    assert not report.complete and not report.reached_none
    assert report.nodes[1].as_dict() == {
        "node": "node-b",
        "status": "unreachable",
        "error": "node unreachable: ConnectError",
    }
    assert report.results[0].status == "ingested"
    assert report.results[0].nodes == {"node-a": "ingested", "node-b": "unreachable"}
    copies = dict(DocumentCopy.objects.values_list("node__name", "status"))
    assert copies == {"node-a": "loaded", "node-b": "failed"}
    assert "a.md" in up.documents("acme", "handbook")


def test_a_node_that_refuses_the_request_is_reported(acme, kb_node_factory):
    fake, _ = kb_node_factory()
    fake.fail_posts_with = (503, {"error": {"code": "retrieval_disabled", "message": "off"}})
    kb = create_knowledge_base(acme, "handbook")

    report = load_documents(kb, [_doc("a.md", "Alpha.")])

    assert report.reached_none
    assert report.nodes[0].error == "HTTP 503 retrieval_disabled: off"
    assert report.results[0].status == "skipped"
    assert not KnowledgeDocument.objects.exists()


def test_with_no_enabled_node_there_is_nowhere_to_load(acme):
    NodeFactory(enabled=False)
    kb = create_knowledge_base(acme, "handbook")
    with pytest.raises(NoServingNodes):
        load_documents(kb, [_doc("a.md", "Alpha.")])


def test_deleting_a_document_removes_it_from_the_nodes_and_the_catalog(acme, kb_node_factory):
    fake, _ = kb_node_factory()
    kb = create_knowledge_base(acme, "handbook")
    load_documents(kb, [_doc("a.md", "Alpha."), _doc("b.md", "Beta.")])

    report = delete_document(KnowledgeDocument.objects.get(name="a.md"))

    assert report.complete
    assert set(fake.documents("acme", "handbook")) == {"b.md"}
    assert list(kb.documents.values_list("name", flat=True)) == ["b.md"]
    assert ObjectChange.objects.filter(action=ChangeAction.DELETE).count() == 1


def test_a_delete_that_cannot_reach_a_node_keeps_the_catalog_entry(acme, kb_node_factory):
    fake, _ = kb_node_factory("node-a")
    gone, _ = kb_node_factory("node-b")
    kb = create_knowledge_base(acme, "handbook")
    load_documents(kb, [_doc("a.md", "Alpha.")])
    gone.stop()

    report = delete_document(KnowledgeDocument.objects.get())

    assert not report.complete
    assert fake.documents("acme", "handbook") == {}  # the node that answered deleted it
    copies = dict(DocumentCopy.objects.values_list("node__name", "status"))
    assert copies == {"node-b": "failed"}  # kept, so the delete can be repeated


def test_deleting_a_knowledge_base_deletes_it_everywhere_and_rolls_out(
    acme, kb_node_factory, on_commit
):
    with on_commit():
        fake, node = kb_node_factory()
    with on_commit():
        kb = create_knowledge_base(acme, "handbook")
    load_documents(kb, [_doc("a.md", "Alpha.")])

    with on_commit():
        report = delete_knowledge_base(kb)

    assert report.complete
    assert fake.documents("acme", "handbook") == {}
    assert not KnowledgeBase.objects.exists() and not KnowledgeDocument.objects.exists()
    latest = ConfigRelease.objects.filter(node=node).order_by("-version").first()
    assert latest.version == 3  # the node's registration, the creation, the delete
    assert latest.document["clients"][0]["knowledge_bases"] == []
    deleted = ObjectChange.objects.filter(action=ChangeAction.DELETE)
    assert sorted(deleted.values_list("object_repr", flat=True)) == [
        "acme/handbook",
        "acme/handbook/a.md",
    ]
