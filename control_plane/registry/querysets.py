"""Querysets for model pins."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

from control_plane.registry.choices import HashStatus

if TYPE_CHECKING:
    from control_plane.registry.models import ModelPin


class ModelPinQuerySet(models.QuerySet["ModelPin"]):
    def enabled(self) -> ModelPinQuerySet:
        return self.filter(enabled=True)

    def servable(self) -> ModelPinQuerySet:
        """Pins a bundle may carry: enabled, and their file's hash verified."""
        return self.filter(enabled=True, hash_status=HashStatus.VERIFIED).exclude(sha256="")
