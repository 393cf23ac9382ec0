"""Operators' API tokens move from DRF's clear-text table to knox's digests.

Each existing token keeps working: it is stored as knox stores a token (its first 15
characters to find it, the SHA-512 of the whole to check it) with the configured
lifetime from now. Then ``authtoken_token``, which held them in clear, is dropped; a
database that never had it (a new installation) is left as it is.
"""

from django.conf import settings
from django.db import migrations
from django.utils import timezone

CLEAR_TABLE = "authtoken_token"


def hash_clear_tokens(apps, schema_editor):
    from knox.crypto import hash_token
    from knox.settings import CONSTANTS

    connection = schema_editor.connection
    if CLEAR_TABLE not in connection.introspection.table_names():
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id FROM {CLEAR_TABLE}")  # noqa: S608 (a constant)
        rows = cursor.fetchall()
    AuthToken = apps.get_model("knox", "AuthToken")
    from knox.settings import knox_settings

    expiry = timezone.now() + knox_settings.TOKEN_TTL
    AuthToken.objects.bulk_create(
        AuthToken(
            digest=hash_token(key),
            token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH],
            user_id=user_id,
            expiry=expiry,
        )
        for key, user_id in rows
    )
    schema_editor.execute(f"DROP TABLE {CLEAR_TABLE}")


class Migration(migrations.Migration):
    dependencies = [
        ("knox", "0009_extend_authtoken_field"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(hash_clear_tokens, migrations.RunPython.noop)]
