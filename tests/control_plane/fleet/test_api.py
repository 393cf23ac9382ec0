"""The nodes and releases API."""

from __future__ import annotations

import pytest

from control_plane.fleet.models import Node
from tests.control_plane.factories import NodeFactory

pytestmark = pytest.mark.django_db


def test_registering_a_node_validates_its_fields(admin_api):
    good_key = NodeFactory.build().public_key

    bad = admin_api.post(
        "/api/nodes/",
        {"name": "bad name", "management_url": "not a url", "public_key": "-----BEGIN nonsense"},
        format="json",
    )
    good = admin_api.post(
        "/api/nodes/",
        {"name": "n1", "management_url": "http://127.0.0.1:8001", "public_key": good_key},
        format="json",
    )

    assert bad.status_code == 400
    assert set(bad.json()) == {"name", "management_url", "public_key"}
    assert good.status_code == 201 and good.json()["key_id"]
    assert good.json()["rollout"] == "no_release"


def test_rolling_out_through_the_api(
    admin_api, auditor_api, anon_api, fake_node_factory, on_commit
):
    fake, node = fake_node_factory("n1")

    assert anon_api.post("/api/releases/", {}, format="json").status_code == 401
    assert auditor_api.post("/api/releases/", {}, format="json").status_code == 403
    assert auditor_api.post(f"/api/nodes/{node.pk}/rollout/").status_code == 403
    with on_commit():
        response = admin_api.post("/api/releases/", {"nodes": ["n1"]}, format="json")

    assert response.status_code == 202
    (release,) = response.json()
    assert (release["node"], release["version"], release["released_by"]) == ("n1", 1, "alice")
    detail = admin_api.get(f"/api/nodes/{node.pk}/").json()
    assert detail["rollout"] == "in_sync" and detail["state"]["applied_version"] == 1
    assert fake.held_version == 1
    listed = auditor_api.get("/api/releases/?node=n1").json()
    assert listed["count"] == 1 and "signed_document" not in listed["results"][0]


def test_rolling_out_to_an_unknown_or_disabled_node_is_a_field_error(admin_api):
    NodeFactory(name="off", enabled=False)

    response = admin_api.post("/api/releases/", {"nodes": ["ghost", "off"]}, format="json")

    assert response.status_code == 400 and set(response.json()) == {"nodes"}
    assert not Node.objects.filter(releases__isnull=False).exists()
