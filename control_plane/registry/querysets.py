"""Querysets for model pins."""

from __future__ import annotations

from django.db import models

from control_plane.registry.choices import HashStatus


class ModelPinQuerySet(models.QuerySet):
    def enabled(self) -> ModelPinQuerySet:
        return self.filter(enabled=True)

    def servable(self) -> ModelPinQuerySet:
        """Pins a bundle may carry: enabled, and their file's hash verified."""
        return self.filter(enabled=True, hash_status=HashStatus.VERIFIED).exclude(sha256="")
