"""The admin console for knowledge bases: the load page, roles, CSRF, the size cap."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client as BrowserClient

from control_plane.changes.models import ObjectChange
from control_plane.fleet.models import NodeState
from control_plane.knowledge.models import KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.services import create_knowledge_base


def _signed_in(user, **kwargs) -> BrowserClient:
    browser = BrowserClient(**kwargs)
    browser.force_login(user)
    return browser


def test_an_admin_loads_files_on_the_page_and_sees_each_outcome(admin_user, acme, kb_node_factory):
    fake, node = kb_node_factory("node-a")
    kb = create_knowledge_base(acme, "handbook")
    browser = _signed_in(admin_user)
    url = f"/admin/knowledge/knowledgebase/{kb.pk}/load/"

    assert browser.get(url).status_code == 200
    page = browser.post(
        url,
        {
            "files": [
                SimpleUploadedFile("guide.md", b"# Guide\n\nThe gate closes at ten."),
                SimpleUploadedFile("photo.png", b"\x89PNG"),
            ]
        },
    )

    assert page.status_code == 200
    text = page.content.decode()
    assert "node-a: answered" in text
    assert "unsupported file type (.png)" in text
    assert set(fake.documents("acme", "handbook")) == {"guide.md"}
    assert KnowledgeDocument.objects.get().name == "guide.md"
    assert ObjectChange.objects.filter(action="load", source="admin").count() == 1

    # The knowledge base's page shows what each node last reported holding.
    NodeState.objects.update_or_create(
        node=node, defaults={"health": {"knowledge_bases": []}, "health_status": "ok"}
    )
    change = browser.get(f"/admin/knowledge/knowledgebase/{kb.pk}/change/").content.decode()
    assert "node-a: 0 of 1 documents: load the missing ones again" in change


def test_the_load_page_checks_csrf_roles_and_the_cap(
    admin_user, auditor_user, acme, kb_node_factory, monkeypatch
):
    fake, _ = kb_node_factory()
    kb = create_knowledge_base(acme, "handbook")
    url = f"/admin/knowledge/knowledgebase/{kb.pk}/load/"

    def files() -> dict:
        return {"files": [SimpleUploadedFile("a.md", b"Alpha. " * 3000)]}

    assert _signed_in(auditor_user).get(url).status_code == 403
    assert _signed_in(admin_user, enforce_csrf_checks=True).post(url, files()).status_code == 403
    monkeypatch.setattr(settings.SANCTUM.knowledge, "max_upload_bytes", 10_000)
    too_big = _signed_in(admin_user).post(url, files())
    assert too_big.status_code == 413
    assert "SANCTUM_CP_KNOWLEDGE__MAX_UPLOAD_BYTES" in too_big.content.decode()
    assert fake.ingest_requests == []


def test_adding_and_deleting_in_the_admin_go_through_the_nodes(admin_user, acme, kb_node_factory):
    fake, _ = kb_node_factory()
    browser = _signed_in(admin_user)

    added = browser.post(
        "/admin/knowledge/knowledgebase/add/",
        {"client": acme.pk, "name": "handbook", "description": ""},
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    kb = KnowledgeBase.objects.get()
    browser.post(
        f"/admin/knowledge/knowledgebase/{kb.pk}/load/",
        {"files": [SimpleUploadedFile("a.md", b"Alpha.")]},
    )
    deleted = browser.post(f"/admin/knowledge/knowledgebase/{kb.pk}/delete/", {"post": "yes"})

    assert deleted.status_code == 302
    assert not KnowledgeBase.objects.exists()
    assert fake.documents("acme", "handbook") == {}
