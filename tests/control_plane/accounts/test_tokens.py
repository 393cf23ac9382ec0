"""Operators' API tokens: stored as digests, expiring, and old clear-text ones carried over."""

from __future__ import annotations

import hashlib
import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from control_plane.accounts.choices import Role
from control_plane.accounts.services import create_operator, issue_api_token

pytestmark = pytest.mark.django_db(transaction=True)

tokens_migration = importlib.import_module(
    "control_plane.accounts.migrations.0001_hashed_operator_tokens"
)


def _api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _table_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM knox_authtoken")
        return repr(cursor.fetchall())


def test_the_token_table_holds_a_digest_and_an_expiry_never_the_token(settings):
    admin = create_operator("alice", Role.ADMIN).user
    token = issue_api_token(admin)

    assert token.startswith("sncop_")
    assert _api(token).get("/api/clients/").status_code == 200
    stored = _table_text()
    assert token not in stored
    assert token[len("sncop_") :] not in stored
    row = AuthToken.objects.get(user=admin)
    assert row.digest == hashlib.sha512(token.encode()).hexdigest()
    ttl = settings.REST_KNOX["TOKEN_TTL"]
    assert timezone.now() + ttl - timedelta(minutes=1) < row.expiry <= timezone.now() + ttl


def test_an_expired_or_rotated_token_is_refused(settings):
    admin = create_operator("alice", Role.ADMIN).user
    old = issue_api_token(admin)
    other = issue_api_token(admin)
    assert _api(old).get("/api/clients/").status_code == 200  # tokens coexist

    AuthToken.objects.filter(digest=hashlib.sha512(old.encode()).hexdigest()).update(
        expiry=timezone.now() - timedelta(seconds=1)
    )
    assert _api(old).get("/api/clients/").status_code == 401
    assert _api(other).get("/api/clients/").status_code == 200

    newest = issue_api_token(admin, rotate=True)
    assert _api(other).get("/api/clients/").status_code == 401
    assert _api(newest).get("/api/clients/").status_code == 200


def test_clear_text_tokens_of_an_older_installation_are_hashed_and_their_table_dropped():
    admin = create_operator("alice", Role.ADMIN).user
    clear = "0123456789abcdef0123456789abcdef01234567"  # DRF's format: 40 hex characters
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamp, "
            "user_id integer NOT NULL)"
        )
        cursor.execute(
            "INSERT INTO authtoken_token (key, created, user_id) VALUES (%s, %s, %s)",
            [clear, timezone.now(), admin.pk],
        )

    with connection.schema_editor() as editor:
        tokens_migration.hash_clear_tokens(apps, editor)

    assert "authtoken_token" not in connection.introspection.table_names()
    assert clear not in _table_text()
    assert _api(clear).get("/api/clients/").status_code == 200
    assert AuthToken.objects.get(user=admin).expiry is not None
