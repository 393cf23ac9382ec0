"""Software releases: recorded by digest and manifest, allowed and disallowed through the
API, the admin and a management command, and the digests the rest of the control plane
reads."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from control_plane.changes.models import ObjectChange
from control_plane.registry.models import SoftwareRelease
from control_plane.registry.services import (
    allow_release,
    allowed_release_digests,
    disallow_release,
)
from shared.software import release_digest, release_manifest
from tests.control_plane.factories import SoftwareReleaseFactory, release_manifest_of

pytestmark = pytest.mark.django_db


def test_a_release_recorded_with_its_manifest_is_listed_not_yet_allowed(admin_api):
    manifest = release_manifest_of(1)
    digest = release_digest(manifest)

    created = admin_api.post(
        "/api/software-releases/",
        {"digest": digest, "name": "2026.12.1", "manifest": manifest},
        format="json",
    )

    assert created.status_code == 201, created.json()
    assert created.json()["digest"] == digest and created.json()["allowed"] is False
    listed = admin_api.get("/api/software-releases/").json()["results"]
    assert [(r["name"], r["has_manifest"]) for r in listed] == [("2026.12.1", True)]
    assert "manifest" not in listed[0]
    detail = admin_api.get(f"/api/software-releases/{created.json()['id']}/").json()
    assert detail["manifest"] == manifest
    assert allowed_release_digests() == []


def test_a_manifest_alone_gives_its_digest(admin_api):
    manifest = release_manifest_of(2)
    created = admin_api.post("/api/software-releases/", {"manifest": manifest}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["digest"] == release_digest(manifest)


def test_a_manifest_that_is_not_of_the_digest_is_refused(admin_api):
    response = admin_api.post(
        "/api/software-releases/",
        {"digest": release_digest(release_manifest_of(3)), "manifest": release_manifest_of(4)},
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"manifest"}
    assert f"digest is {release_digest(release_manifest_of(4))}" in response.json()["manifest"][0]
    assert not SoftwareRelease.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"digest": "not-a-digest"}, "digest"),
        ({"digest": "AB" * 32}, "digest"),
        ({"name": "no digest"}, "digest"),
        ({"manifest": {"format": "something else"}}, "manifest"),
        ({"manifest": {**release_manifest_of(5), "python": 3.11}}, "manifest"),
    ],
)
def test_malformed_releases_are_field_errors(admin_api, body, field):
    response = admin_api.post("/api/software-releases/", body, format="json")
    assert response.status_code == 400, response.json()
    assert set(response.json()) == {field}


def test_a_digest_is_recorded_once(admin_api):
    release = SoftwareReleaseFactory()
    again = admin_api.post("/api/software-releases/", {"digest": release.digest}, format="json")
    assert again.status_code == 400 and set(again.json()) == {"digest"}


def test_allow_and_disallow_through_the_api_are_in_the_trail(admin_api):
    first, second, _ = SoftwareReleaseFactory.create_batch(3)

    assert admin_api.post(f"/api/software-releases/{second.pk}/allow/").json()["allowed"] is True
    assert admin_api.post(f"/api/software-releases/{first.pk}/allow/").status_code == 200
    assert allowed_release_digests() == sorted([first.digest, second.digest])
    gone = admin_api.post(f"/api/software-releases/{first.pk}/disallow/").json()

    assert gone["allowed"] is False and gone["allowed_at"] and gone["disallowed_at"]
    assert allowed_release_digests() == [second.digest]
    trail = ObjectChange.objects.for_object(first).order_by("pk")
    assert [(c.user_name, c.source, c.diff().get("allowed")) for c in trail] == [
        ("", "system", (None, False)),  # the factory's create
        ("alice", "api", (False, True)),
        ("alice", "api", (True, False)),
    ]
    assert all("manifest" not in (c.postchange_data or {}) for c in trail)


def test_only_admins_record_or_allow(auditor_api, anon_api):
    release = SoftwareReleaseFactory()

    assert auditor_api.get("/api/software-releases/").status_code == 200
    assert auditor_api.post(
        "/api/software-releases/", {"digest": "ab" * 32}, format="json"
    ).status_code == (403)
    assert auditor_api.post(f"/api/software-releases/{release.pk}/allow/").status_code == 403
    assert anon_api.get("/api/software-releases/").status_code == 401
    assert allowed_release_digests() == []


def test_allowing_twice_changes_nothing():
    release = allow_release(SoftwareReleaseFactory())
    again = allow_release(release)
    assert again.allowed_at == release.allowed_at
    assert ObjectChange.objects.for_object(release).count() == 2  # create, allow
    assert disallow_release(disallow_release(again)).allowed is False


def test_the_command_allows_this_environments_own_manifest(tmp_path):
    manifest = release_manifest()
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    out = StringIO()

    call_command("allow_release", "--manifest", str(path), "--name", "2026.12.1", stdout=out)
    call_command("allow_release", "--digest", release_digest(manifest), stdout=out)

    release = SoftwareRelease.objects.get()
    assert (release.name, release.allowed, release.manifest) == ("2026.12.1", True, manifest)
    assert allowed_release_digests() == [release_digest()]
    assert "already recorded" in out.getvalue().splitlines()[1]
    assert {c.source for c in ObjectChange.objects.for_object(release)} == {"command"}


def test_the_command_refuses_what_is_not_a_manifest(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"format": "sanctum-release-manifest/1", "python": 3.11}')
    with pytest.raises(CommandError, match="not a release manifest"):
        call_command("allow_release", "--manifest", str(path))
    with pytest.raises(CommandError, match="digest: Give the release digest"):
        call_command("allow_release", "--digest", "xyz")
    assert not SoftwareRelease.objects.exists()


def test_the_admin_allows_with_its_action(admin_client):
    release = SoftwareReleaseFactory()
    response = admin_client.post(
        "/admin/registry/softwarerelease/",
        {"action": "allow", "_selected_action": [release.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert allowed_release_digests() == [release.digest]
