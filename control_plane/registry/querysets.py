"""Querysets for model pins and software releases."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

from control_plane.registry.choices import HashStatus

SERVABLE_HASH_STATUSES = (HashStatus.VERIFIED, HashStatus.DECLARED)

if TYPE_CHECKING:
    from control_plane.registry.models import ModelPin, SoftwareRelease


class ModelPinQuerySet(models.QuerySet["ModelPin"]):
    def enabled(self) -> ModelPinQuerySet:
        return self.filter(enabled=True)

    def servable(self) -> ModelPinQuerySet:
        """Pins a bundle may carry: enabled, and their file's hash verified here or
        declared (pinned by source: nodes check the file they fetch)."""
        return self.filter(enabled=True, hash_status__in=SERVABLE_HASH_STATUSES).exclude(sha256="")


class SoftwareReleaseQuerySet(models.QuerySet["SoftwareRelease"]):
    def allowed(self) -> SoftwareReleaseQuerySet:
        return self.filter(allowed=True)
