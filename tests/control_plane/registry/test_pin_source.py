"""Pins by source: the admin gives the file's sha256 and size and where nodes fetch it;
the control plane never reads the file, and bundles carry all three."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client as BrowserClient

from control_plane.fleet.rollout import build_bundle
from control_plane.registry.choices import HashStatus
from control_plane.registry.models import ModelPin
from tests.control_plane.factories import NodeFactory, model_file

pytestmark = pytest.mark.django_db

SHA = "ab" * 32
SOURCE = "http://10.30.0.5/models/llm-q4.gguf"


def _post(admin_api: Any, on_commit: Any, **fields: Any) -> Any:
    body = {"name": "llm", "version": "q4", **fields}
    with on_commit():
        return admin_api.post("/api/model-pins/", body, format="json")


def test_a_pin_by_source_is_declared_and_usable_at_once_without_the_file(admin_api, on_commit):
    # The URL leads nowhere from here: the control plane must not try to read it.
    made = _post(admin_api, on_commit, source=SOURCE, sha256=SHA, size=123_456_789)

    assert made.status_code == 201, made.json()
    body = admin_api.get(f"/api/model-pins/{made.json()['id']}/").json()
    assert (body["hash_status"], body["sha256"], body["size"]) == ("declared", SHA, 123_456_789)
    assert (body["source"], body["path"]) == (SOURCE, "")
    (spec,) = build_bundle(NodeFactory(), 1).models
    assert (spec.source, spec.sha256, spec.size, spec.path) == (SOURCE, SHA, 123_456_789, None)


def test_a_pin_by_path_still_hashes_its_file_and_its_bundle_names_no_source(admin_api, on_commit):
    path = model_file("by-path")
    made = _post(admin_api, on_commit, path=str(path))

    assert made.status_code == 201, made.json()
    (spec,) = build_bundle(NodeFactory(), 1).models
    assert (spec.path, spec.source, spec.size) == (str(path), None, None)
    assert ModelPin.objects.get().hash_status == HashStatus.VERIFIED


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"source": SOURCE, "sha256": SHA.upper(), "size": 10}, {"sha256"}),
        ({"source": SOURCE, "sha256": SHA[:63], "size": 10}, {"sha256"}),
        ({"source": SOURCE, "size": 10}, {"sha256"}),
        ({"source": SOURCE, "sha256": SHA}, {"size"}),
        ({"source": SOURCE, "sha256": SHA, "size": 0}, {"size"}),
        ({"source": "ftp://10.30.0.5/m.gguf", "sha256": SHA, "size": 10}, {"source"}),
        ({"source": "http://admin:pw@10.30.0.5/m.gguf", "sha256": SHA, "size": 10}, {"source"}),
        ({"source": "http://10.30.0.5/m.gguf?token=x", "sha256": SHA, "size": 10}, {"source"}),
        ({"source": "models/m.gguf", "sha256": SHA, "size": 10}, {"source"}),
        ({"path": "/m.gguf", "sha256": SHA}, {"sha256"}),
    ],
)
def test_a_bad_pin_by_source_is_a_field_error(admin_api, on_commit, fields, errors):
    response = _post(admin_api, on_commit, **fields)

    assert response.status_code == 400, response.json()
    assert set(response.json()) == errors
    assert not ModelPin.objects.exists()


@pytest.mark.parametrize(
    "fields", [{}, {"path": "/m.gguf", "source": SOURCE, "sha256": SHA, "size": 10}]
)
def test_a_pin_names_its_file_by_path_or_by_source(admin_api, on_commit, fields):
    response = _post(admin_api, on_commit, **fields)

    assert response.status_code == 400
    assert "path" in response.json()


def test_the_file_a_pin_names_is_fixed(admin_api, on_commit):
    made = _post(admin_api, on_commit, source=SOURCE, sha256=SHA, size=10)
    url = f"/api/model-pins/{made.json()['id']}/"

    moved = admin_api.patch(url, {"source": "http://10.30.0.5/other.gguf"}, format="json")
    rehashed = admin_api.patch(url, {"sha256": "cd" * 32}, format="json")

    assert moved.status_code == 400 and set(moved.json()) == {"source"}
    assert rehashed.status_code == 400 and set(rehashed.json()) == {"sha256"}


def test_a_new_version_by_source_replaces_the_pin_by_path_at_once_and_rolls_back(
    admin_api, on_commit
):
    old = _post(admin_api, on_commit, path=str(model_file("llm-q4")))
    new = _post(
        admin_api, on_commit, version="q8", source=SOURCE, sha256=SHA, size=10, supersede=True
    )

    assert new.status_code == 201, new.json()
    (spec,) = build_bundle(NodeFactory(), 1).models
    assert (spec.version, spec.source) == ("q8", SOURCE)
    back = admin_api.post(f"/api/model-pins/{new.json()['id']}/rollback/")
    assert back.status_code == 200 and back.json()["id"] == old.json()["id"]
    again = admin_api.post(f"/api/model-pins/{old.json()['id']}/rollback/")
    assert again.status_code == 400  # the first pin replaced nothing


def test_verifying_a_pin_by_source_reads_nothing_and_keeps_it_declared(admin_api, on_commit):
    made = _post(admin_api, on_commit, source="/mnt/models/llm-q4.gguf", sha256=SHA, size=10)

    with on_commit():
        verified = admin_api.post(f"/api/model-pins/{made.json()['id']}/verify/")

    assert verified.status_code == 202
    assert (verified.json()["hash_status"], verified.json()["sha256"]) == ("declared", SHA)


def test_a_pin_by_source_is_made_in_the_admin_and_its_file_is_fixed_there(admin_user, on_commit):
    browser = BrowserClient()
    browser.force_login(admin_user)
    form = {"name": "llm", "version": "q4", "context_size": 2048, "enabled": "on"}

    refused = browser.post(
        "/admin/registry/modelpin/add/", {**form, "source": "ftp://x/m.gguf", "sha256": SHA}
    )
    assert refused.status_code == 200 and not ModelPin.objects.exists()  # the form again
    with on_commit():
        made = browser.post(
            "/admin/registry/modelpin/add/",
            {**form, "source": SOURCE, "sha256": SHA, "size": 10},
        )

    assert made.status_code == 302, made.content.decode()[-2000:]
    pin = ModelPin.objects.get()
    assert (pin.source, pin.sha256, pin.size, pin.hash_status) == (SOURCE, SHA, 10, "declared")
    page = browser.get(f"/admin/registry/modelpin/{pin.pk}/change/").content.decode()
    assert 'name="source"' not in page and 'name="sha256"' not in page  # read-only now
