"""Issuing, rotating and revoking API keys."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from control_plane.changes.models import ObjectChange
from control_plane.clients.choices import ApiKeyStatus
from control_plane.clients.models import ApiKey
from control_plane.clients.services import issue_api_key, revoke_api_key, rotate_api_key
from control_plane.core.errors import Conflict
from shared.config import api_key_prefix, hash_api_key
from tests.control_plane.factories import ClientFactory

pytestmark = pytest.mark.django_db


def _all_stored_text() -> str:
    """Every row of every control-plane table, as text: where a leaked key would show."""
    dump = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            dump.extend(json.dumps(row, default=str) for row in cursor.fetchall())
    return "\n".join(dump)


def test_an_issued_key_is_returned_once_and_stored_only_as_prefix_and_hash():
    issued = issue_api_key(ClientFactory(), name="ci")

    stored = ApiKey.objects.get(pk=issued.api_key.pk)
    assert api_key_prefix(issued.secret) == stored.prefix
    assert stored.sha256 == hash_api_key(issued.secret)
    assert issued.secret not in _all_stored_text()
    assert issued.secret not in repr(issued)


def test_rotating_gives_the_key_a_new_secret_and_records_when():
    issued = issue_api_key(ClientFactory())

    rotated = rotate_api_key(issued.api_key)

    assert rotated.secret != issued.secret
    assert rotated.api_key.pk == issued.api_key.pk
    stored = ApiKey.objects.get(pk=issued.api_key.pk)
    assert stored.sha256 == hash_api_key(rotated.secret)
    assert stored.last_rotated_at is not None
    assert not ApiKey.objects.filter(sha256=hash_api_key(issued.secret)).exists()


def test_revoking_is_final_and_idempotent():
    issued = issue_api_key(ClientFactory())

    revoked = revoke_api_key(issued.api_key, reason="laptop lost")
    again = revoke_api_key(issued.api_key, reason="twice")

    assert revoked.status == ApiKeyStatus.REVOKED
    assert again.revoked_at == revoked.revoked_at
    assert again.revoked_reason == "laptop lost"
    with pytest.raises(Conflict):
        rotate_api_key(issued.api_key)
    assert ObjectChange.objects.filter(action="revoke_key").count() == 1


def test_an_expiry_in_the_past_is_a_field_error():
    with pytest.raises(ValidationError) as caught:
        issue_api_key(ClientFactory(), expires_at=timezone.now() - timedelta(minutes=1))
    assert "expires_at" in caught.value.message_dict


def test_usable_keys_leave_out_revoked_and_expired_ones():
    client = ClientFactory()
    good = issue_api_key(client).api_key
    revoke_api_key(issue_api_key(client).api_key)
    expiring = issue_api_key(client, expires_at=timezone.now() + timedelta(seconds=30)).api_key

    later = timezone.now() + timedelta(minutes=1)
    assert set(ApiKey.objects.usable()) == {good, expiring}
    assert list(ApiKey.objects.usable(later)) == [good]
