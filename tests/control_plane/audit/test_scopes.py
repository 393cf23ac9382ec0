"""Auditors scoped to clients: they list, page through and download only their clients'
receipts, get 403 for any other client through the page and the API, and see nothing of
the admin console but the audit pages."""

from __future__ import annotations

import pytest
from django.test import Client as BrowserClient
from django.test import override_settings
from rest_framework.test import APIClient

from control_plane.accounts.choices import Role
from control_plane.accounts.services import create_operator, issue_api_token, scope_auditor
from control_plane.audit.backends import check_backend_order
from control_plane.audit.services import collect_node
from shared.ledger import verify_bundle
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged(usage_node):
    """acme: two sessions; globex: one; initech: registered, no receipts."""
    fake, node = usage_node
    for slug in ("acme", "globex", "initech"):
        ClientFactory(slug=slug)
    sessions = {"acme": [], "globex": []}
    for client in ("acme", "globex", "acme"):
        record, _ = fake.add_usage(client)
        sessions[client].append(record.session_id)
    assert collect_node(node).appended == 3
    return sessions


def _scoped(slugs):
    user = create_operator("sam", Role.AUDITOR).user
    from control_plane.clients.models import Client

    scope_auditor(user, list(Client.objects.filter(slug__in=slugs)))
    return user


def _browser(user) -> BrowserClient:
    browser = BrowserClient()
    browser.force_login(user)
    return browser


def _api(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {issue_api_token(user)}")
    return api


def test_a_scoped_auditor_gets_403_for_another_clients_bundle_through_the_page(
    logged, log_public_key
):
    browser = _browser(_scoped(["acme"]))

    page = browser.get("/audit/", {"client": "acme"})
    other_page = browser.get("/audit/", {"client": "globex"})
    other_bundle = browser.get("/api/audit/bundle/", {"client": "globex"})
    assert page.status_code == 200, page.content[:3000]
    own_bundle = browser.get(page.context["bundle_url"])

    assert page.context["clients"] == ["acme"]  # the picker offers only its clients
    text = page.content.decode()
    assert "2 receipts of client acme" in text
    assert "globex" not in text and "initech" not in text
    assert other_page.status_code == 403
    assert other_bundle.status_code == 403 and "globex" in other_bundle.json()["detail"]
    assert own_bundle.status_code == 200
    report = verify_bundle(own_bundle.content, log_key=log_public_key)
    assert report.ok and (report.client_id, report.receipt_count) == ("acme", 2)


def test_a_scoped_auditor_gets_403_for_another_clients_bundle_through_the_api(logged):
    api = _api(_scoped(["acme"]))

    listed = api.get("/api/audit/receipts/")
    own = api.get("/api/audit/receipts/?client=acme")
    other = api.get("/api/audit/receipts/?client=globex")
    bundle = api.get("/api/audit/bundle/?client=globex")
    # An unknown client is 403 too: a scoped auditor can't probe which clients exist.
    unknown = api.get("/api/audit/bundle/?client=nobody")
    unknown_list = api.get("/api/audit/receipts/?client=nobody")
    globex_id = logged["globex"][0]
    detail = api.get("/api/audit/receipts/?session_id=" + globex_id)

    assert listed.status_code == 200
    assert sorted(r["session_id"] for r in listed.json()["results"]) == sorted(logged["acme"])
    assert own.json()["count"] == 2
    assert other.status_code == 403 and bundle.status_code == 403
    assert bundle["Content-Type"].startswith("application/json")
    assert "receipts" not in bundle.json()  # an error, not an empty bundle
    assert unknown.status_code == 403 and unknown_list.status_code == 403
    assert detail.status_code == 200 and detail.json()["count"] == 0
    # tree heads, proofs and the log key are global
    assert api.get("/api/audit/tree-heads/latest/").json()["size"] == 3
    assert api.get("/api/audit/log-key/").status_code == 200
    assert api.get("/api/audit/checkpoint/").status_code == 200


def test_another_clients_receipt_is_not_found_by_its_id(logged):
    from control_plane.audit.models import Receipt

    api = _api(_scoped(["acme"]))
    globex = Receipt.objects.get(client="globex")
    acme = Receipt.objects.filter(client="acme").first()

    assert api.get(f"/api/audit/receipts/{globex.record_id}/").status_code == 404
    assert api.get(f"/api/audit/receipts/{acme.record_id}/").status_code == 200


def test_a_scope_with_no_clients_sees_nothing_and_unscoped_auditors_see_all(logged, auditor_api):
    nobody = _api(_scoped([]))

    assert nobody.get("/api/audit/receipts/").json()["count"] == 0
    assert nobody.get("/api/audit/bundle/?client=acme").status_code == 403
    assert auditor_api.get("/api/audit/receipts/").json()["count"] == 3
    assert auditor_api.get("/api/audit/bundle/?client=globex").status_code == 200


def test_a_deleted_client_leaves_its_scoped_auditor_with_less_not_more(logged):
    from control_plane.clients.models import Client

    user = _scoped(["initech"])
    Client.objects.get(slug="initech").delete()
    api = _api(user)

    assert api.get("/api/audit/receipts/").json()["count"] == 0
    assert api.get("/api/audit/bundle/?client=acme").status_code == 403


def test_the_admins_receipt_list_holds_only_the_scoped_auditors_clients(logged):
    browser = _browser(_scoped(["acme"]))

    receipts = browser.get("/admin/audit/receipt/")
    filtered_away = browser.get("/admin/audit/receipt/", {"client": "globex"})

    assert receipts.status_code == 200
    text = receipts.content.decode()
    assert all(s in text for s in logged["acme"])
    assert logged["globex"][0] not in text and "globex" not in text  # the filter too
    assert logged["globex"][0] not in filtered_away.content.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/admin/clients/client/",
        "/admin/clients/apikey/",
        "/admin/network/peer/",
        "/admin/changes/objectchange/",
        "/admin/knowledge/knowledgebase/",
        "/admin/registry/modelpin/",
        "/admin/fleet/node/",
        "/admin/audit/refusedrecord/",
        "/admin/audit/collectionstate/",
    ],
)
def test_a_scoped_auditor_reads_no_other_admin_page(logged, path, auditor_user):
    scoped = _browser(_scoped(["acme"]))

    assert scoped.get(path).status_code == 403
    assert _browser(auditor_user).get(path).status_code == 200  # the unscoped role reads them


def test_a_scoped_auditors_admin_index_and_api_show_only_the_audit_pages(logged):
    user = _scoped(["acme"])
    index = _browser(user).get("/admin/")
    api = _api(user)

    assert index.status_code == 200
    models = {m["object_name"] for app in index.context["app_list"] for m in app["models"]}
    assert models == {"Receipt", "TreeHead", "NodeKey"}
    for path in ("/api/clients/", "/api/api-keys/", "/api/changes/", "/api/nodes/"):
        assert api.get(path).status_code == 403, path


def test_the_scoped_auditor_backend_must_come_before_a_granting_one():
    assert check_backend_order() == []
    with override_settings(
        AUTHENTICATION_BACKENDS=[
            "django.contrib.auth.backends.ModelBackend",
            "control_plane.audit.backends.ScopedAuditorBackend",
        ]
    ):
        errors = check_backend_order()
    with override_settings(AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.ModelBackend"]):
        missing = check_backend_order()

    assert [e.id for e in errors] == ["sanctum.E001"] and "before" in errors[0].msg
    assert [e.id for e in missing] == ["sanctum.E001"]
