"""Roles, operators and the bootstrap that ``sanctum up`` runs."""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import Group
from django.test import RequestFactory

from control_plane.accounts.choices import Role
from control_plane.accounts.services import bootstrap_demo, create_operator
from control_plane.clients.models import ApiKey, Client
from control_plane.registry.models import ModelPin
from shared.config import hash_api_key
from tests.control_plane.factories import model_file

pytestmark = pytest.mark.django_db


def _sign_in_request():
    # django-axes keys its lockout on the request's address, so it wants one.
    return RequestFactory().post("/admin/login/")


def test_migrate_creates_the_roles_with_server_side_permissions():
    admin = set(Group.objects.get(name="admin").permissions.values_list("codename", flat=True))
    auditor = set(Group.objects.get(name="auditor").permissions.values_list("codename", flat=True))

    assert {"add_apikey", "change_apikey", "add_configrelease", "change_modelpin"} <= admin
    assert {"view_client", "view_apikey", "view_objectchange", "view_configrelease"} <= auditor
    assert all(code.startswith("view_") for code in auditor)
    # The trail is written by the code, never edited by anyone.
    assert not {"add_objectchange", "change_objectchange", "delete_objectchange"} & admin


def test_create_operator_generates_a_password_once():
    first = create_operator("bob", Role.AUDITOR)
    again = create_operator("bob", Role.AUDITOR)

    assert first.password and again.password is None
    assert authenticate(_sign_in_request(), username="bob", password=first.password) == first.user
    assert list(first.user.groups.values_list("name", flat=True)) == ["auditor"]
    assert first.user.is_staff and not first.user.is_superuser


def _bootstrap(**overrides):
    options = {
        "model_name": "demo-model",
        "model_version": "v1",
        "model_path": str(model_file("demo-model")),
        "context_size": 2048,
    }
    options.update(overrides)
    return bootstrap_demo(**options)


def test_bootstrap_is_idempotent_and_its_printed_credentials_work(on_commit):
    with on_commit():
        first = _bootstrap()
    with on_commit():
        second = _bootstrap()

    assert Client.objects.count() == 1 and ModelPin.objects.count() == 1
    key = ApiKey.objects.get()  # one slot, rotated: the latest printed key is the one
    assert key.sha256 == hash_api_key(second.api_key) != hash_api_key(first.api_key)
    assert authenticate(_sign_in_request(), username="admin", password=second.admin.password)
    assert ModelPin.objects.servable().get().clients.get().slug == "demo"


def test_bootstrap_lets_the_demo_client_search_the_knowledge_bases_named(on_commit):
    with on_commit():
        _bootstrap(knowledge_bases=["docs"])
    with on_commit():
        _bootstrap(knowledge_bases=["docs", "handbook"])
    with on_commit():
        _bootstrap()  # adds nothing, takes nothing away

    assert Client.objects.get().knowledge_bases.names() == ["docs", "handbook"]
