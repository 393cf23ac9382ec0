"""The auditors' page on the control plane: receipts by client and period, and the link
that downloads the bundle."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client as BrowserClient

from control_plane.audit.services import collect_node
from shared.ledger import verify_bundle
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged(usage_node):
    fake, node = usage_node
    ClientFactory(slug="acme")
    ClientFactory(slug="globex")
    records = [fake.add_usage("acme", completion_tokens=7)[0] for _ in range(3)]
    fake.add_usage("globex")
    collect_node(node)
    return records


def _browser(user=None) -> BrowserClient:
    browser = BrowserClient()
    if user is not None:
        browser.force_login(user)
    return browser


def test_an_auditor_lists_a_clients_receipts_and_downloads_the_bundle(
    logged, auditor_user, log_public_key
):
    browser = _browser(auditor_user)

    page = browser.get("/audit/", {"client": "acme", "since": "2020-01-01"})

    assert page.status_code == 200
    text = page.content.decode()
    assert "3 receipts of client acme" in text and "21 completion tokens" in text
    assert all(r.session_id in text for r in logged)
    assert "globex" in text  # offered in the client list, its receipts not shown
    link = page.context["bundle_url"]
    assert link == "/api/audit/bundle/?client=acme&since=2020-01-01T00%3A00%3A00Z"
    download = browser.get(link)  # the same session, through the API
    assert download.status_code == 200
    report = verify_bundle(download.content, log_key=log_public_key)
    assert report.ok and report.receipt_count == 3
    assert page.context["log_key"].verifier_key in text


def test_the_page_refuses_a_bad_period_or_an_unknown_client(logged, auditor_user):
    browser = _browser(auditor_user)
    backwards = browser.get(
        "/audit/", {"client": "acme", "since": "2025-02-01", "until": "2025-01-01"}
    )
    unknown = browser.get("/audit/", {"client": "nobody"})

    assert backwards.status_code == 200 and "before it starts" in backwards.content.decode()
    assert "bundle_url" not in backwards.context
    assert unknown.status_code == 200 and "Select a valid choice" in unknown.content.decode()


def test_the_page_needs_a_login_and_the_auditor_or_admin_role(logged, admin_user):
    anonymous = _browser().get("/audit/")
    nobody = get_user_model().objects.create_user("nobody", password="pw", is_staff=True)

    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    assert _browser(nobody).get("/audit/").status_code == 403
    assert _browser(admin_user).get("/audit/", {"client": "acme"}).status_code == 200
