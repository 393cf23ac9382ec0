"""Receivers that log what ``ChangeLoggedModel.save`` can't see: deletes and M2M edits.

Django runs these inside the transaction of the delete (its collector is atomic) and of
the ``.set()``/``.add()`` call, so the trail row commits or rolls back with the change.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete
from django.dispatch import receiver

from control_plane.changes.choices import ChangeAction
from control_plane.changes.models import ChangeLoggedModel
from control_plane.changes.services import record_change


@receiver(post_delete)
def log_delete(sender: type, instance: Any, **kwargs: Any) -> None:
    if not isinstance(instance, ChangeLoggedModel):
        return
    before = getattr(instance, "_change_snapshot", None) or instance.snapshot()
    record_change(instance, ChangeAction.DELETE, before, None)


def _m2m_field_name(instance: Any, through: type) -> str | None:
    for field in instance._meta.many_to_many:
        if field.remote_field.through is through:
            return field.name
    return None


@receiver(m2m_changed)
def log_m2m_change(sender: type, instance: Any, action: str, reverse: bool, **kwargs: Any) -> None:
    # Log only from the side that declares the field and lists it; the reverse side
    # (client.model_pins.add(...)) is rare and is logged on the owning object's next save.
    if reverse or not isinstance(instance, ChangeLoggedModel):
        return
    name = _m2m_field_name(instance, sender)
    if name is None or name not in instance.change_logged_fields:
        return
    manager = getattr(instance, name)
    if action.startswith("pre_"):
        instance._m2m_before = {name: sorted(manager.values_list("pk", flat=True))}
        return
    if not action.startswith("post_"):
        return
    before = dict(instance.snapshot(), **getattr(instance, "_m2m_before", {name: []}))
    after = dict(instance.snapshot(), **{name: sorted(manager.values_list("pk", flat=True))})
    if before[name] != after[name]:
        with transaction.atomic():
            record_change(instance, ChangeAction.UPDATE, before, after)
