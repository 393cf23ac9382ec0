"""Querysets of the rollout mechanism: targets (nodes, gateways) and their releases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self, TypedDict, TypeVar

from django.db import models
from django.db.models import OuterRef, Subquery

from control_plane.core.choices import ReleaseStatus

if TYPE_CHECKING:
    from control_plane.core.models import Release, RolloutTarget

# Each kind's querysets are these, bound to its concrete models.
_TargetT = TypeVar("_TargetT", bound="RolloutTarget")
_ReleaseT = TypeVar("_ReleaseT", bound="Release")


class LatestRelease(TypedDict):
    """What :meth:`RolloutTargetQuerySet.with_rollout` adds to each target."""

    latest_version: int | None
    latest_status: str | None
    latest_error: str | None


class RolloutTargetQuerySet(models.QuerySet[_TargetT]):
    """Targets of a rollout; the concrete model has ``enabled`` and ``releases``."""

    def enabled(self) -> Self:
        return self.filter(enabled=True)

    def with_rollout(self) -> Self:
        """Annotate each target with its latest release's version, status and error."""
        relation = self.model._meta.get_field("releases")
        if not isinstance(relation, models.ManyToOneRel):
            raise TypeError(f"{self.model._meta.label}.releases is not a release foreign key")
        latest = relation.related_model._default_manager.filter(
            **{relation.field.name: OuterRef("pk")}
        ).order_by("-version")
        return self.select_related("state").annotate(
            latest_version=Subquery(latest.values("version")[:1]),
            latest_status=Subquery(latest.values("status")[:1]),
            latest_error=Subquery(latest.values("last_error")[:1]),
        )


class ReleaseQuerySet(models.QuerySet[_ReleaseT]):
    """Releases of one kind; the concrete model names its target in ``target_field``."""

    def of(self, target_id: int) -> Self:
        return self.filter(**{f"{self.model.target_field}_id": target_id})

    def latest_for(self, target_id: int) -> _ReleaseT | None:
        return self.of(target_id).order_by("-version").first()

    def deliverable(self) -> Self:
        """Releases a push may still send (a rejected one needs a new rollout)."""
        return self.filter(status__in=[ReleaseStatus.PENDING, ReleaseStatus.FAILED])


if TYPE_CHECKING:
    # The managers the abstract models declare for the type checker (each concrete model
    # makes its own with ``as_manager()``).
    RolloutTargetManager = models.Manager.from_queryset(RolloutTargetQuerySet)
    ReleaseManager = models.Manager.from_queryset(ReleaseQuerySet)
