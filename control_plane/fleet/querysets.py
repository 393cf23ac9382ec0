"""Querysets for nodes and releases."""

from __future__ import annotations

from django.db import models

from control_plane.fleet.choices import ReleaseStatus


class NodeQuerySet(models.QuerySet):
    def enabled(self) -> NodeQuerySet:
        return self.filter(enabled=True)

    def with_rollout(self) -> NodeQuerySet:
        return with_rollout(self)


class ConfigReleaseQuerySet(models.QuerySet):
    def latest_for(self, node_id: int) -> models.Model | None:
        return self.filter(node_id=node_id).order_by("-version").first()

    def deliverable(self) -> ConfigReleaseQuerySet:
        """Releases a push may still send (a rejected one needs a new rollout)."""
        return self.filter(status__in=[ReleaseStatus.PENDING, ReleaseStatus.FAILED])


def with_rollout(queryset: NodeQuerySet) -> NodeQuerySet:
    """Annotate each node with its latest release's version, status and error."""
    from django.db.models import OuterRef, Subquery

    from control_plane.fleet.models import ConfigRelease

    latest = ConfigRelease.objects.filter(node=OuterRef("pk")).order_by("-version")
    return queryset.select_related("state").annotate(
        latest_version=Subquery(latest.values("version")[:1]),
        latest_status=Subquery(latest.values("status")[:1]),
        latest_error=Subquery(latest.values("last_error")[:1]),
    )
