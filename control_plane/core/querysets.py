"""Querysets of the rollout mechanism: targets (nodes, gateways) and their releases."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import OuterRef, Subquery

from control_plane.core.choices import ReleaseStatus


class RolloutTargetQuerySet(models.QuerySet):
    """Targets of a rollout; the concrete model has ``enabled`` and ``releases``."""

    def enabled(self) -> Any:
        return self.filter(enabled=True)

    def with_rollout(self) -> Any:
        """Annotate each target with its latest release's version, status and error."""
        relation = self.model._meta.get_field("releases")
        release_model = relation.related_model
        latest = release_model.objects.filter(**{relation.field.name: OuterRef("pk")}).order_by(
            "-version"
        )
        return self.select_related("state").annotate(
            latest_version=Subquery(latest.values("version")[:1]),
            latest_status=Subquery(latest.values("status")[:1]),
            latest_error=Subquery(latest.values("last_error")[:1]),
        )


class ReleaseQuerySet(models.QuerySet):
    """Releases of one kind; the concrete model names its target in ``target_field``."""

    def of(self, target_id: int) -> Any:
        return self.filter(**{f"{self.model.target_field}_id": target_id})

    def latest_for(self, target_id: int) -> Any:
        return self.of(target_id).order_by("-version").first()

    def deliverable(self) -> Any:
        """Releases a push may still send (a rejected one needs a new rollout)."""
        return self.filter(status__in=[ReleaseStatus.PENDING, ReleaseStatus.FAILED])
