"""Scoping an auditor to clients: with create_operator, the REST API (admins only) and the
user's admin page; every change lands in the change trail."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client as BrowserClient

from control_plane.accounts.models import AuditorScope
from control_plane.audit.scopes import audit_scope
from control_plane.changes.models import ObjectChange
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def clients():
    return [ClientFactory(slug=slug) for slug in ("acme", "bank", "globex")]


def _create(*args: str) -> dict[str, str]:
    out = StringIO()
    call_command("create_operator", *args, stdout=out)
    return dict(line.split("=", 1) for line in out.getvalue().splitlines())


def _scope_of(username: str):
    return audit_scope(get_user_model().objects.get(username=username))


def test_create_operator_scopes_an_auditor_to_the_clients_named(clients):
    printed = _create("sam", "--role", "auditor", "--clients", "acme, bank")
    again = _create("sam", "--role", "auditor")  # keeps the scope it has
    assert printed["SANCTUM_OPERATOR_CLIENTS"] == again["SANCTUM_OPERATOR_CLIENTS"] == "acme,bank"
    assert _scope_of("sam").clients == {"acme", "bank"}

    _create("sam", "--role", "auditor", "--clients", "")
    assert _scope_of("sam").clients == frozenset()  # scoped to nothing, not to everything

    lifted = _create("sam", "--role", "auditor", "--all-clients")
    assert "SANCTUM_OPERATOR_CLIENTS" not in lifted and not _scope_of("sam").scoped


def test_create_operator_refuses_unknown_clients_and_scoped_admins(clients):
    with pytest.raises(CommandError, match="no client nowhere"):
        _create("sam", "--role", "auditor", "--clients", "acme,nowhere")
    with pytest.raises(CommandError, match="only auditors"):
        _create("root", "--role", "admin", "--clients", "acme")

    assert not get_user_model().objects.filter(username__in=["sam", "root"]).exists()


def test_an_auditor_made_admin_loses_its_scope(clients):
    _create("sam", "--role", "auditor", "--clients", "acme")
    _create("sam", "--role", "admin")

    assert not AuditorScope.objects.exists() and not _scope_of("sam").scoped


def test_admins_scope_auditors_over_rest_and_auditors_cannot(clients, admin_api, auditor_api):
    _create("sam", "--role", "auditor")

    made = admin_api.post(
        "/api/auditor-scopes/", {"auditor": "sam", "clients": ["acme"]}, format="json"
    )
    changed = admin_api.patch(
        "/api/auditor-scopes/sam/", {"clients": ["bank", "globex"]}, format="json"
    )
    listed = admin_api.get("/api/auditor-scopes/")
    by_auditor = auditor_api.post(
        "/api/auditor-scopes/", {"auditor": "audrey", "clients": []}, format="json"
    )
    peek = auditor_api.get("/api/auditor-scopes/")
    not_an_auditor = admin_api.post(
        "/api/auditor-scopes/", {"auditor": "alice", "clients": ["acme"]}, format="json"
    )

    assert made.status_code == 201 and made.json() == {"auditor": "sam", "clients": ["acme"]}
    assert changed.status_code == 200 and changed.json()["clients"] == ["bank", "globex"]
    assert listed.json()["results"] == [{"auditor": "sam", "clients": ["bank", "globex"]}]
    assert by_auditor.status_code == 403 and peek.status_code == 403
    assert not_an_auditor.status_code == 400 and "auditor" in not_an_auditor.json()
    assert _scope_of("sam").clients == {"bank", "globex"}

    lifted = admin_api.delete("/api/auditor-scopes/sam/")
    assert lifted.status_code == 204 and not _scope_of("sam").scoped
    trail = ObjectChange.objects.filter(object_repr="scope of sam").order_by("pk")
    assert trail.first().action == "create" and trail.last().action == "delete"
    assert any(c.user_name == "alice" for c in trail)


def test_an_admin_scopes_an_auditor_on_its_user_page(clients, admin_user):
    sam = get_user_model().objects.create_user("sam", is_staff=True)
    _create("sam", "--role", "auditor")
    browser = BrowserClient()
    browser.force_login(admin_user)
    url = f"/admin/auth/user/{sam.pk}/change/"
    page = browser.get(url)
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "password"}
    data.update(
        {
            "groups": [g.pk for g in sam.groups.all()],
            "date_joined_0": "2025-01-01",
            "date_joined_1": "00:00:00",
            "auditor_scope-TOTAL_FORMS": "1",
            "auditor_scope-INITIAL_FORMS": "0",
            "auditor_scope-MIN_NUM_FORMS": "0",
            "auditor_scope-MAX_NUM_FORMS": "1",
            "auditor_scope-0-clients": [clients[0].pk],
            "auditor_scope-0-user": str(sam.pk),
        }
    )
    data.pop("last_login", None)
    data.pop("date_joined", None)

    saved = browser.post(url, data)

    assert page.status_code == 200 and "client scope" in page.content.decode().lower()
    assert saved.status_code == 302, saved.context["errors"] if saved.context else saved
    assert _scope_of("sam").clients == {"acme"}


def test_the_add_user_page_takes_a_scope_with_the_new_auditor(clients, admin_user):
    browser = BrowserClient()
    browser.force_login(admin_user)

    added = browser.post(
        "/admin/auth/user/add/",
        {
            "username": "newbie",
            "usable_password": "false",
            "auditor_scope-TOTAL_FORMS": "1",
            "auditor_scope-INITIAL_FORMS": "0",
            "auditor_scope-MIN_NUM_FORMS": "0",
            "auditor_scope-MAX_NUM_FORMS": "1",
            "auditor_scope-0-clients": [clients[1].pk],
        },
    )

    assert added.status_code == 302, added.content[:2000]
    assert _scope_of("newbie").clients == {"bank"}
