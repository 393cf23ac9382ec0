"""The admin console for clients and keys: the issue action, roles, CSRF."""

from __future__ import annotations

import re

import pytest
from django.test import Client as BrowserClient

from control_plane.clients.models import ApiKey
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"sk-snc-[A-Za-z0-9]{8}-[A-Za-z0-9_-]{32,}")


def _signed_in(user) -> BrowserClient:
    browser = BrowserClient()
    browser.force_login(user)
    return browser


def test_the_issue_action_shows_the_new_key_exactly_once(admin_user):
    client = ClientFactory(slug="acme")
    browser = _signed_in(admin_user)

    page = browser.post(
        "/admin/clients/client/",
        {"action": "issue_key", "_selected_action": [client.pk]},
    )

    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    shown = KEY_RE.findall(page.content.decode())
    assert len(shown) == 1
    key = ApiKey.objects.get(client=client)
    assert shown[0].startswith(f"sk-snc-{key.prefix}-")
    for url in (
        "/admin/clients/apikey/",
        f"/admin/clients/apikey/{key.pk}/change/",
        f"/admin/clients/client/{client.pk}/change/",
        "/admin/changes/objectchange/",
    ):
        text = browser.get(url).content.decode()
        assert shown[0] not in text and key.sha256 not in text
        assert key.prefix in text or url.startswith("/admin/changes")


def test_auditors_see_the_console_read_only(auditor_user):
    client = ClientFactory(slug="acme")
    browser = _signed_in(auditor_user)

    listing = browser.get("/admin/clients/client/")
    change = browser.post(f"/admin/clients/client/{client.pk}/change/", {"name": "Renamed"})
    action = browser.post(
        "/admin/clients/client/", {"action": "issue_key", "_selected_action": [client.pk]}
    )

    assert listing.status_code == 200 and "acme" in listing.content.decode()
    assert "issue_key" not in listing.content.decode()
    assert change.status_code == 403
    assert not ApiKey.objects.exists()
    assert action.status_code in (200, 302) and not KEY_RE.search(action.content.decode())


def test_the_admin_login_enforces_csrf(admin_user):
    admin_user.set_password("a-long-test-password")
    admin_user.save()
    browser = BrowserClient(enforce_csrf_checks=True)

    response = browser.post(
        "/admin/login/", {"username": admin_user.username, "password": "a-long-test-password"}
    )

    assert response.status_code == 403


def test_revoking_from_the_console(admin_user):
    browser = _signed_in(admin_user)
    browser.post(
        "/admin/clients/client/",
        {"action": "issue_key", "_selected_action": [ClientFactory().pk]},
    )
    key = ApiKey.objects.get()

    browser.post("/admin/clients/apikey/", {"action": "revoke", "_selected_action": [key.pk]})

    key.refresh_from_db()
    assert key.revoked_at is not None
