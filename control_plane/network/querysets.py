"""Querysets for gateways, peers and gateway releases."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Q
from django.utils import timezone

from control_plane.core.querysets import ReleaseQuerySet, RolloutTargetQuerySet

if TYPE_CHECKING:
    from control_plane.network.models import Gateway, GatewayRelease, Peer


class GatewayQuerySet(RolloutTargetQuerySet["Gateway"]):
    def with_rollout(self) -> GatewayQuerySet:
        return super().with_rollout().select_related("pool")


class PeerQuerySet(models.QuerySet["Peer"]):
    def active(self, at: datetime | None = None) -> PeerQuerySet:
        """Peers whose tunnel belongs in the gateway config at ``at``."""
        at = at or timezone.now()
        return self.filter(enabled=True, client__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=at)
        )

    def due_to_expire(self, at: datetime | None = None) -> PeerQuerySet:
        """Enabled peers whose expiry has passed: the periodic task disables them."""
        at = at or timezone.now()
        return self.filter(enabled=True, expires_at__lte=at)


class GatewayReleaseQuerySet(ReleaseQuerySet["GatewayRelease"]):
    pass
