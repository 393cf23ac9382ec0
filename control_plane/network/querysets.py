"""Querysets for gateways, peers and gateway releases."""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from control_plane.fleet.choices import ReleaseStatus


class GatewayQuerySet(models.QuerySet):
    def enabled(self) -> GatewayQuerySet:
        return self.filter(enabled=True)

    def with_rollout(self) -> GatewayQuerySet:
        """Annotate each gateway with its latest release's version, status and error."""
        from control_plane.network.models import GatewayRelease

        latest = GatewayRelease.objects.filter(gateway=OuterRef("pk")).order_by("-version")
        return self.select_related("state", "pool").annotate(
            latest_version=Subquery(latest.values("version")[:1]),
            latest_status=Subquery(latest.values("status")[:1]),
            latest_error=Subquery(latest.values("last_error")[:1]),
        )


class PeerQuerySet(models.QuerySet):
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


class GatewayReleaseQuerySet(models.QuerySet):
    def deliverable(self) -> GatewayReleaseQuerySet:
        return self.filter(status__in=[ReleaseStatus.PENDING, ReleaseStatus.FAILED])
