"""The clients and keys API: permissions, field errors, a key shown once."""

from __future__ import annotations

import pytest

from control_plane.clients.models import ApiKey, Client
from shared.config import hash_api_key
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db


def test_anonymous_requests_get_401(anon_api):
    assert anon_api.get("/api/clients/").status_code == 401
    assert anon_api.post("/api/clients/", {"id": "x", "name": "X"}).status_code == 401


def test_auditors_read_but_cannot_write(auditor_api):
    ClientFactory(slug="acme")

    listed = auditor_api.get("/api/clients/")
    created = auditor_api.post("/api/clients/", {"id": "new", "name": "New"}, format="json")
    edited = auditor_api.patch("/api/clients/acme/", {"name": "Renamed"}, format="json")
    issued = auditor_api.post("/api/api-keys/", {"client": "acme"}, format="json")

    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()["results"]] == ["acme"]
    assert (created.status_code, edited.status_code, issued.status_code) == (403, 403, 403)
    assert Client.objects.get(slug="acme").name != "Renamed"


def test_an_admin_creates_a_client(admin_api):
    response = admin_api.post(
        "/api/clients/",
        {"id": "acme-law", "name": "Acme Law", "max_sessions": 4},
        format="json",
    )

    assert response.status_code == 201, response.json()
    assert response.json()["knowledge_bases"] == []  # made under /api/knowledge-bases/
    client = Client.objects.get(slug="acme-law")
    assert (client.name, client.max_sessions) == ("Acme Law", 4)


def test_bad_client_payloads_get_field_level_errors(admin_api):
    ClientFactory(slug="taken")

    response = admin_api.post(
        "/api/clients/",
        {"id": "taken", "name": "", "max_sessions": 0},
        format="json",
    )
    bad_id = admin_api.post("/api/clients/", {"id": "-bad id", "name": "N"}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"id", "name", "max_sessions"}
    assert bad_id.status_code == 400 and set(bad_id.json()) == {"id"}
    renamed = admin_api.patch("/api/clients/taken/", {"id": "other"}, format="json")
    assert renamed.status_code == 400 and set(renamed.json()) == {"id"}


def test_issuing_a_key_answers_with_it_once_and_never_again(admin_api):
    ClientFactory(slug="acme")

    issued = admin_api.post("/api/api-keys/", {"client": "acme", "name": "ci"}, format="json")

    assert issued.status_code == 201
    assert issued["Cache-Control"] == "no-store"
    body = issued.json()
    key = body["key"]
    assert key.startswith("sk-snc-") and body["prefix"] in key
    assert "sha256" not in body
    stored = ApiKey.objects.get(pk=body["id"])
    assert stored.sha256 == hash_api_key(key)
    for url in (f"/api/api-keys/{body['id']}/", "/api/api-keys/", "/api/clients/acme/"):
        text = admin_api.get(url).content.decode()
        assert key not in text and stored.sha256 not in text


def test_bad_key_payloads_get_field_level_errors(admin_api):
    response = admin_api.post(
        "/api/api-keys/",
        {"client": "nobody", "expires_at": "not a date"},
        format="json",
    )
    past = admin_api.post(
        "/api/api-keys/",
        {"client": ClientFactory().slug, "expires_at": "2001-01-01T00:00:00Z"},
        format="json",
    )

    assert response.status_code == 400 and set(response.json()) == {"client", "expires_at"}
    assert past.status_code == 400 and set(past.json()) == {"expires_at"}


def test_revoke_and_rotate_through_the_api(admin_api, auditor_api):
    client = ClientFactory(slug="acme")
    key_id = admin_api.post("/api/api-keys/", {"client": client.slug}, format="json").json()["id"]

    assert auditor_api.post(f"/api/api-keys/{key_id}/revoke/").status_code == 403
    rotated = admin_api.post(f"/api/api-keys/{key_id}/rotate/")
    revoked = admin_api.post(f"/api/api-keys/{key_id}/revoke/", {"reason": "left"}, format="json")
    rotate_revoked = admin_api.post(f"/api/api-keys/{key_id}/rotate/")

    assert rotated.status_code == 200 and rotated.json()["key"].startswith("sk-snc-")
    assert revoked.status_code == 200
    assert (revoked.json()["status"], revoked.json()["revoked_reason"]) == ("revoked", "left")
    assert rotate_revoked.status_code == 409


def test_lists_are_paginated_and_filterable(admin_api):
    client = ClientFactory(slug="acme")
    ids = [
        admin_api.post("/api/api-keys/", {"client": "acme"}, format="json").json()["id"]
        for _ in range(3)
    ]
    admin_api.post(f"/api/api-keys/{ids[0]}/revoke/")
    ClientFactory.create_batch(3)

    page = admin_api.get("/api/clients/?limit=2").json()
    revoked = admin_api.get("/api/api-keys/?status=revoked").json()
    active = admin_api.get(f"/api/api-keys/?status=active&client={client.slug}").json()

    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    assert [k["id"] for k in revoked["results"]] == [ids[0]]
    assert sorted(k["id"] for k in active["results"]) == sorted(ids[1:])


def test_the_openapi_schema_covers_the_resources(admin_api):
    response = admin_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/clients/",
        "/api/api-keys/",
        "/api/api-keys/{id}/revoke/",
        "/api/model-pins/",
        "/api/nodes/",
        "/api/nodes/{id}/rollout/",
        "/api/releases/",
        "/api/software-releases/",
        "/api/software-releases/{id}/allow/",
    ):
        assert path in paths
