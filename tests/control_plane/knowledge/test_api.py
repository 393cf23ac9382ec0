"""The knowledge-base REST API: who may do what, uploads in memory only, clear 4xx."""

from __future__ import annotations

import tempfile

import pytest
from django.conf import settings
from django.core.files import temp as django_temp
from django.core.files.uploadedfile import SimpleUploadedFile

from control_plane.changes.models import ObjectChange
from control_plane.knowledge.models import KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.services import create_knowledge_base


def _files(*pairs: tuple[str, bytes]) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(name, data) for name, data in pairs]


def _upload(api, kb_id: int, files, names=None):
    data: dict = {"file": files}
    if names is not None:
        data["name"] = names
    return api.post(f"/api/knowledge-bases/{kb_id}/documents/", data, format="multipart")


def test_an_admin_creates_loads_reads_and_deletes(admin_api, acme, kb_node_factory):
    fake, _ = kb_node_factory("node-a")

    created = admin_api.post(
        "/api/knowledge-bases/", {"client": "acme", "name": "handbook"}, format="json"
    )
    assert created.status_code == 201, created.json()
    kb_id = created.json()["id"]
    loaded = _upload(
        admin_api,
        kb_id,
        _files(("deep.md", b"# Deep\n\nNested."), ("photo.png", b"\x89PNG")),
        names=["sub/deep.md", "photo.png"],
    )
    assert loaded.status_code == 200, loaded.json()
    body = loaded.json()
    assert body["complete"] is True
    assert body["nodes"] == [{"node": "node-a", "status": "ok"}]
    assert [(r["name"], r["status"]) for r in body["results"]] == [
        ("sub/deep.md", "ingested"),
        ("photo.png", "skipped"),
    ]
    assert body["results"][1]["reason"] == "unsupported file type (.png)"
    assert set(fake.documents("acme", "handbook")) == {"sub/deep.md"}

    detail = admin_api.get(f"/api/knowledge-bases/{kb_id}/").json()
    assert (detail["document_count"], detail["chunk_count"]) == (1, 1)
    (document,) = detail["documents"]
    assert (document["name"], document["bytes"]) == ("sub/deep.md", 15)
    assert document["copies"][0]["node"] == "node-a"
    assert document["copies"][0]["status"] == "loaded"
    assert admin_api.get("/api/clients/acme/").json()["knowledge_bases"] == ["handbook"]
    listed = admin_api.get("/api/knowledge-bases/?client=acme&name=handbook").json()
    assert [kb["id"] for kb in listed["results"]] == [kb_id]

    gone = admin_api.delete(f"/api/knowledge-documents/{document['id']}/")
    assert gone.status_code == 200 and gone.json()["complete"] is True
    assert fake.documents("acme", "handbook") == {}
    deleted = admin_api.delete(f"/api/knowledge-bases/{kb_id}/")
    assert deleted.status_code == 200, deleted.json()
    assert not KnowledgeBase.objects.exists()
    actions = set(ObjectChange.objects.values_list("action", "source"))
    assert {("create", "api"), ("load", "api"), ("delete", "api")} <= actions


def test_auditors_read_and_change_nothing_anonymous_gets_401(
    admin_api, auditor_api, anon_api, acme, kb_node_factory
):
    fake, _ = kb_node_factory()
    kb = create_knowledge_base(acme, "handbook")
    _upload(admin_api, kb.pk, _files(("a.md", b"Alpha.")))
    document = KnowledgeDocument.objects.get()

    assert auditor_api.get(f"/api/knowledge-bases/{kb.pk}/").status_code == 200
    assert auditor_api.get("/api/knowledge-documents/").status_code == 200
    refused = [
        auditor_api.post("/api/knowledge-bases/", {"client": "acme", "name": "x"}),
        _upload(auditor_api, kb.pk, _files(("b.md", b"Beta."))),
        auditor_api.delete(f"/api/knowledge-documents/{document.pk}/"),
        auditor_api.delete(f"/api/knowledge-bases/{kb.pk}/"),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403, 403]
    assert anon_api.get("/api/knowledge-bases/").status_code == 401
    assert _upload(anon_api, kb.pk, _files(("b.md", b"Beta."))).status_code == 401
    assert set(fake.documents("acme", "handbook")) == {"a.md"}


def test_bad_requests_get_a_clear_4xx(admin_api, acme, kb_node_factory):
    kb_node_factory()
    kb = create_knowledge_base(acme, "handbook")

    taken = admin_api.post("/api/knowledge-bases/", {"client": "acme", "name": "handbook"})
    assert taken.status_code == 409 and taken.json()["code"] == "knowledge_base_exists"
    bad = admin_api.post("/api/knowledge-bases/", {"client": "nobody", "name": "not ok!"})
    assert bad.status_code == 400 and set(bad.json()) == {"client", "name"}
    no_files = admin_api.post(f"/api/knowledge-bases/{kb.pk}/documents/", {}, format="multipart")
    assert no_files.status_code == 400 and "file" in no_files.json()
    miscounted = _upload(admin_api, kb.pk, _files(("a.md", b"A")), names=["a.md", "b.md"])
    assert miscounted.status_code == 400 and "name" in miscounted.json()
    control = _upload(admin_api, kb.pk, _files(("a.md", b"A")), names=["bad\x01name.md"])
    assert control.status_code == 400 and "control characters" in control.json()["name"][0]
    as_json = admin_api.post(f"/api/knowledge-bases/{kb.pk}/documents/", {}, format="json")
    assert as_json.status_code == 415
    assert admin_api.get("/api/knowledge-bases/999/").status_code == 404
    assert admin_api.delete("/api/clients/acme/").status_code == 409  # it has a knowledge base


def test_no_enabled_node_is_409(admin_api, acme):
    kb = create_knowledge_base(acme, "handbook")
    response = _upload(admin_api, kb.pk, _files(("a.md", b"Alpha.")))
    assert response.status_code == 409 and response.json()["code"] == "no_serving_nodes"


def test_a_node_that_is_down_is_in_the_answer(admin_api, acme, kb_node_factory):
    fake, _ = kb_node_factory("node-a")
    fake.stop()
    kb = create_knowledge_base(acme, "handbook")

    response = _upload(admin_api, kb.pk, _files(("a.md", b"Alpha.")))

    assert response.status_code == 502
    assert response.json()["nodes"][0]["status"] == "unreachable"
    assert response.json()["results"][0]["status"] == "skipped"


def test_an_upload_over_the_cap_is_413_before_it_is_read(
    admin_api, acme, kb_node_factory, monkeypatch
):
    fake, _ = kb_node_factory()
    kb = create_knowledge_base(acme, "handbook")
    monkeypatch.setattr(settings.SANCTUM.knowledge, "max_upload_bytes", 10_000)

    response = _upload(admin_api, kb.pk, _files(("big.md", b"x" * 20_000)))

    assert response.status_code == 413
    assert "SANCTUM_CP_KNOWLEDGE__MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert fake.ingest_requests == []


def test_large_uploads_stay_in_memory(admin_api, acme, kb_node_factory, monkeypatch):
    """Past Django's 2.5 MB memory threshold, its default handlers write a temp file."""
    fake, _ = kb_node_factory(max_request_bytes=16 * 1_048_576)
    kb = create_knowledge_base(acme, "handbook")

    def no_temp_files(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_temp_files)
    monkeypatch.setattr(django_temp, "NamedTemporaryFile", no_temp_files)  # Django's alias
    data = b"Large but in memory. " * 200_000  # 4.2 MB
    response = _upload(admin_api, kb.pk, _files(("large.txt", data)))

    assert response.status_code == 200, response.json()
    assert fake.last_bytes["large.txt"] == data


def test_limits_name_the_cap_and_what_the_nodes_take(admin_api, auditor_api, acme, kb_node_factory):
    kb_node_factory()
    limits = auditor_api.get("/api/knowledge-bases/limits/?client=acme")
    assert limits.status_code == 200
    body = limits.json()
    assert body["max_request_bytes"] == settings.SANCTUM.knowledge.max_upload_bytes
    assert ".pdf" in body["file_types"] and body["max_document_bytes"] == 16 * 1_048_576
    assert admin_api.get("/api/knowledge-bases/limits/?client=nobody").status_code == 400


@pytest.mark.parametrize("path", ["/api/knowledge-bases/", "/api/knowledge-documents/"])
def test_lists_filter_by_client(admin_api, acme, kb_node_factory, path):
    kb_node_factory()
    create_knowledge_base(acme, "handbook")
    assert admin_api.get(f"{path}?client=other").json()["results"] == []
