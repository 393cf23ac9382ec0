"""Querysets for clients and keys."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from django.db import models
from django.db.models import Count, Q
from django.utils import timezone

if TYPE_CHECKING:
    from control_plane.clients.models import ApiKey, Client


class KeyCounts(TypedDict):
    """What :meth:`ClientQuerySet.with_key_counts` adds to each client."""

    usable_key_count: int


class ClientQuerySet(models.QuerySet["Client"]):
    def active(self) -> ClientQuerySet:
        return self.filter(is_active=True)

    def with_key_counts(self) -> ClientQuerySet:
        now = timezone.now()
        return self.annotate(
            usable_key_count=Count(
                "api_keys",
                filter=Q(api_keys__revoked_at__isnull=True)
                & (Q(api_keys__expires_at__isnull=True) | Q(api_keys__expires_at__gt=now)),
            )
        )


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def usable(self, at: datetime | None = None) -> ApiKeyQuerySet:
        """Keys that a node should accept at ``at``: not revoked, not expired."""
        at = at or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=at)
        )

    def revoked(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=False)

    def expired(self, at: datetime | None = None) -> ApiKeyQuerySet:
        at = at or timezone.now()
        return self.filter(revoked_at__isnull=True, expires_at__lte=at)
