"""Receipts, statements, log subtrees, tree heads and node keys can't be changed or deleted: not by
the models, not in the admin, not through the API, not by SQL around the ORM."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test import Client as BrowserClient

from control_plane.accounts.services import create_operator
from control_plane.audit.models import (
    AppendOnlyError,
    LogSubtree,
    NodeKey,
    Receipt,
    Statement,
    TreeHead,
)
from control_plane.audit.services import collect_node

pytestmark = pytest.mark.django_db

LEDGER = (Receipt, Statement, LogSubtree, TreeHead, NodeKey)


@pytest.fixture
def logged(usage_node):
    fake, node = usage_node
    fake.statements = True  # a statement is logged too
    for _ in range(3):
        fake.add_usage("acme")
    assert collect_node(node).appended == 3
    assert Statement.objects.count() == 1
    return Receipt.objects.order_by("log_index").first()


@pytest.mark.parametrize("model", LEDGER, ids=lambda m: m.__name__)
def test_the_models_refuse_edits_and_deletes(logged, model):
    row = model.objects.first()
    before = model.objects.filter(pk=row.pk).values().get()
    for field in model._meta.concrete_fields:
        if not field.primary_key:
            setattr(row, field.attname, getattr(row, field.attname))
            break

    with pytest.raises(AppendOnlyError):
        row.save()
    with pytest.raises(AppendOnlyError):
        row.delete()
    with pytest.raises(AppendOnlyError):
        model.objects.filter(pk=row.pk).update(pk=row.pk)
    with pytest.raises(AppendOnlyError):
        model.objects.filter(pk=row.pk).delete()
    with pytest.raises(AppendOnlyError):
        model.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        model.objects.bulk_update([row], [model._meta.concrete_fields[1].name])

    assert model.objects.filter(pk=row.pk).values().get() == before


def test_a_receipt_can_not_be_rewritten_by_saving_a_copy(logged):
    copy = Receipt.objects.get(pk=logged.pk)
    copy._state.adding = True  # pretend it is new: the insert clashes, nothing is replaced
    copy.prompt_tokens = 10**6
    with pytest.raises(IntegrityError), transaction.atomic():
        copy.save()
    assert Receipt.objects.get(pk=logged.pk).prompt_tokens == logged.prompt_tokens


@pytest.mark.parametrize("model", LEDGER, ids=lambda m: m.__name__)
def test_the_database_refuses_update_and_delete_around_the_orm(logged, model):
    table = connection.ops.quote_name(model._meta.db_table)  # a name of ours, not input
    row = model.objects.first()
    before = model.objects.filter(pk=row.pk).values().get()
    statements = [
        ("UPDATE {} SET id = id WHERE id = %s", [row.pk]),
        ("DELETE FROM {} WHERE id = %s", [row.pk]),
        ("DELETE FROM {}", []),
    ]
    for sql, params in statements:
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql.format(table), params)

    assert model.objects.filter(pk=row.pk).values().get() == before
    assert model.objects.count() >= 1


def test_the_ledger_tables_carry_their_triggers(db):
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger'")
        else:
            cursor.execute(
                "SELECT event_object_table FROM information_schema.triggers "
                "WHERE event_manipulation IN ('UPDATE', 'DELETE')"
            )
        tables = {row[0] for row in cursor.fetchall()}
    assert {m._meta.db_table for m in LEDGER} <= tables


@pytest.mark.parametrize("role", ["admin", "auditor", "superuser"])
def test_the_admin_shows_the_ledger_read_only(logged, role):
    if role == "superuser":
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    else:
        user = create_operator(f"op-{role}", role).user
    browser = BrowserClient()
    browser.force_login(user)
    base = "/admin/audit/receipt/"

    listing = browser.get(base)
    detail = browser.get(f"{base}{logged.pk}/change/")

    assert listing.status_code == 200 and logged.session_id in listing.text
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.text and "deletelink" not in detail.text
    assert browser.get(f"{base}add/").status_code == 403
    assert browser.get(f"{base}{logged.pk}/delete/").status_code == 403
    tampered = browser.post(f"{base}{logged.pk}/change/", {"prompt_tokens": 1})
    assert tampered.status_code == 403
    assert browser.post(f"{base}{logged.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = browser.post(
        base, {"action": "delete_selected", "_selected_action": [logged.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)  # no such action: nothing happens
    for path in ("/admin/audit/treehead/", "/admin/audit/nodekey/"):
        assert browser.get(path).status_code == 200
        assert browser.get(f"{path}add/").status_code == 403
    assert Receipt.objects.filter(pk=logged.pk, prompt_tokens=logged.prompt_tokens).exists()
    assert Receipt.objects.count() == 3


@pytest.mark.parametrize("who", ["admin_api", "auditor_api", "anon_api"])
def test_the_api_refuses_every_write(logged, who, request):
    api = request.getfixturevalue(who)
    expected = 401 if who == "anon_api" else 403
    detail = f"/api/audit/receipts/{logged.record_id}/"
    head = TreeHead.objects.latest_head()
    heads = TreeHead.objects.count()
    attempts = [
        api.post("/api/audit/receipts/", {"client": "acme"}, format="json"),
        api.put(detail, {"prompt_tokens": 1}, format="json"),
        api.patch(detail, {"prompt_tokens": 1}, format="json"),
        api.delete(detail),
        api.post("/api/audit/tree-heads/", {"size": 99}, format="json"),
        api.delete(f"/api/audit/tree-heads/{head.size}/"),
        api.post("/api/audit/bundle/?client=acme", {}, format="json"),
        api.post("/api/audit/consistency/?old=1", {}, format="json"),
        api.post("/api/audit/statements/", {"node": "n1"}, format="json"),
        api.delete("/api/audit/statements/0/"),
        api.post("/api/audit/releases/", {}, format="json"),
    ]

    assert [r.status_code for r in attempts] == [expected] * len(attempts)
    assert Receipt.objects.count() == 3 and TreeHead.objects.count() == heads
    assert Statement.objects.count() == 1
