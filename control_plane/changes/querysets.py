"""Querysets for the change trail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.contenttypes.models import ContentType
from django.db import models

if TYPE_CHECKING:
    from django.db.models import Model

    from control_plane.changes.models import ObjectChange


class ObjectChangeQuerySet(models.QuerySet["ObjectChange"]):
    def for_object(self, obj: Model) -> ObjectChangeQuerySet:
        """The trail of one object, oldest first."""
        return self.filter(
            changed_object_type=ContentType.objects.get_for_model(obj),
            changed_object_id=str(obj.pk),
        ).order_by("time", "pk")
