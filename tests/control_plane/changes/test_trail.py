"""The change trail: who changed what, before and after, never a secret."""

from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, transaction

from control_plane.changes.choices import ChangeAction, ChangeSource
from control_plane.changes.models import ObjectChange
from control_plane.changes.services import change_context
from control_plane.clients.models import Client
from control_plane.clients.services import issue_api_key, revoke_api_key, rotate_api_key
from tests.control_plane.factories import ClientFactory, ModelPinFactory

pytestmark = pytest.mark.django_db


def test_api_edits_are_attributed_with_before_and_after(admin_api):
    admin_api.post("/api/clients/", {"id": "acme", "name": "Acme"}, format="json")
    admin_api.patch("/api/clients/acme/", {"max_sessions": 3}, format="json")
    admin_api.delete("/api/clients/acme/")

    trail = list(ObjectChange.objects.order_by("pk"))
    assert [c.action for c in trail] == ["create", "update", "delete"]
    assert {(c.user_name, c.source, c.object_repr) for c in trail} == {("alice", "api", "acme")}
    assert trail[1].diff() == {"max_sessions": (8, 3)}
    assert trail[2].postchange_data is None and trail[2].prechange_data["slug"] == "acme"


def test_key_changes_are_logged_without_the_key_or_its_hash():
    client = ClientFactory()
    with change_context(source=ChangeSource.COMMAND):
        issued = issue_api_key(client)
        rotated = rotate_api_key(issued.api_key)
        revoke_api_key(issued.api_key, reason="done")

    rows = ObjectChange.objects.for_object(issued.api_key)
    assert [r.action for r in rows] == [
        ChangeAction.ISSUE_KEY,
        ChangeAction.ROTATE_KEY,
        ChangeAction.REVOKE_KEY,
    ]
    text = json.dumps([[r.prechange_data, r.postchange_data] for r in ObjectChange.objects.all()])
    for secret in (issued.secret, rotated.secret):
        assert secret not in text
    assert issued.api_key.sha256 not in text and rotated.api_key.sha256 not in text
    assert rotated.api_key.prefix in text


def test_many_to_many_edits_are_logged():
    pin = ModelPinFactory()
    client = ClientFactory()

    pin.clients.add(client)

    change = ObjectChange.objects.for_object(pin).last()
    assert change.diff() == {"clients": ([], [client.pk])}


def test_a_change_that_rolls_back_leaves_no_trail():
    ClientFactory(slug="acme")
    before = ObjectChange.objects.count()

    with pytest.raises(IntegrityError), transaction.atomic():
        Client(slug="acme", name="duplicate").save()

    assert ObjectChange.objects.count() == before


def test_the_trail_is_append_only(admin_api):
    ClientFactory()
    change = ObjectChange.objects.get()

    with pytest.raises(TypeError):
        change.save()
    with pytest.raises(TypeError):
        change.delete()
    assert admin_api.delete(f"/api/changes/{change.pk}/").status_code in (403, 405)
    assert ObjectChange.objects.filter(pk=change.pk).exists()
    assert admin_api.get("/api/changes/?action=create").json()["count"] == 1
