"""Client and API-key use cases. The admin actions, the API views and tasks call these.

Each change is written with its change-trail row in one transaction (the models are
change-logged). A key's secret is returned once in :class:`IssuedKey` and never stored:
only its prefix and SHA-256 are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from control_plane.changes.choices import ChangeAction
from control_plane.clients.models import ApiKey, Client
from control_plane.core.errors import Conflict
from control_plane.fleet.models import NodePool
from control_plane.fleet.placement import check_client_placement
from control_plane.knowledge.models import DocumentCopy
from shared.config import new_api_key

# A fresh prefix colliding is a 1-in-57^8 event; try again rather than fail.
_ISSUE_ATTEMPTS = 3


@dataclass(frozen=True)
class IssuedKey:
    """A key just issued or rotated. ``secret`` is the only copy: show it once."""

    api_key: ApiKey
    secret: str = field(repr=False)


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "Choose a time in the future."})


def _new_secret(api_key: ApiKey) -> str:
    secret, prefix, digest = new_api_key()
    api_key.prefix = prefix
    api_key.sha256 = digest
    return secret


def issue_api_key(
    client: Client, *, name: str = "", expires_at: datetime | None = None
) -> IssuedKey:
    """Issue a new key for ``client``. It works on the nodes after the next rollout."""
    _check_expiry(expires_at)
    for attempt in range(_ISSUE_ATTEMPTS):
        api_key = ApiKey(client=client, name=name, expires_at=expires_at)
        secret = _new_secret(api_key)
        api_key.set_change_action(ChangeAction.ISSUE_KEY)
        try:
            with transaction.atomic():
                api_key.save()
        except IntegrityError:
            if attempt == _ISSUE_ATTEMPTS - 1:
                raise
            continue
        return IssuedKey(api_key=api_key, secret=secret)
    raise AssertionError("unreachable")


def rotate_api_key(api_key: ApiKey) -> IssuedKey:
    """Give ``api_key`` a new secret; the old one stops working at the next rollout."""
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is not None:
            raise Conflict("a revoked key can't be rotated; issue a new one", "key_revoked")
        secret = _new_secret(locked)
        locked.last_rotated_at = timezone.now()
        locked.set_change_action(ChangeAction.ROTATE_KEY)
        locked.save()
    return IssuedKey(api_key=locked, secret=secret)


def revoke_api_key(api_key: ApiKey, *, reason: str = "") -> ApiKey:
    """Revoke ``api_key`` for good (idempotent). Nodes refuse it after the next rollout."""
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.revoked_reason = reason[:200]
            locked.set_change_action(ChangeAction.REVOKE_KEY)
            locked.save()
    return locked


def save_client(client: Client) -> Client:
    """Save ``client`` on its node pool, under the pool's row lock, so a dedicated pool
    takes exactly one client however many are placed on it at once (``ValidationError``
    for the second).

    A node keeps no data of a client its config does not list: one that moved to another
    pool, or was disabled, loses its knowledge bases' copies on the nodes that no longer
    serve it when they apply that config, and the catalog forgets those copies here. The
    documents stay in the catalog: load them again for the nodes that serve it now
    (docs/rag.md).
    """
    with transaction.atomic():
        pool = NodePool.objects.select_for_update().get(pk=client.pool.pk)
        check_client_placement(pool, client)
        client.save()
        copies = DocumentCopy.objects.filter(document__knowledge_base__client=client)
        if client.is_active:
            copies = copies.exclude(node__pool=client.pool_id)
        copies.delete()
    return client
