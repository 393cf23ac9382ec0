"""The change trail (:class:`ObjectChange`) and the mixin that writes it."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, ClassVar, Self

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router, transaction

from control_plane.changes.choices import ChangeAction, ChangeSource
from control_plane.changes.querysets import ObjectChangeQuerySet


class ObjectChange(models.Model):
    """One change to one object: who, when, from where, and its metadata before and after.

    Rows are append-only: the model refuses updates and deletes, the admin and the API
    only read. ``prechange_data`` and ``postchange_data`` hold only the fields the
    changed model lists in ``change_logged_fields``: never a key, a hash or a secret.
    """

    time = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="object_changes",
    )
    # Kept as text too, so the trail still names the user after the account is deleted.
    user_name = models.CharField(max_length=150, blank=True)
    source = models.CharField(max_length=16, choices=ChangeSource.choices)
    action = models.CharField(max_length=16, choices=ChangeAction.choices, db_index=True)
    changed_object_type = models.ForeignKey(ContentType, on_delete=models.PROTECT, related_name="+")
    changed_object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    prechange_data = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    postchange_data = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)

    objects = ObjectChangeQuerySet.as_manager()

    class Meta:
        ordering = ("-time", "-pk")
        indexes = [models.Index(fields=["changed_object_type", "changed_object_id"])]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise TypeError("the change trail is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the change trail is append-only")

    def diff(self) -> dict[str, tuple[Any, Any]]:
        """Fields whose value differs: ``{field: (before, after)}``."""
        before = self.prechange_data or {}
        after = self.postchange_data or {}
        return {
            key: (before.get(key), after.get(key))
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        }


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


class ChangeLoggedModel(models.Model):
    """Mixin: every save and delete writes an :class:`ObjectChange` in the same transaction.

    Subclasses list the metadata fields to record in ``change_logged_fields`` (an allow
    list: a field added later is left out until someone decides it is safe to log).
    Many-to-many fields listed there are logged by ``m2m_changed`` (see ``signals``).
    A service can name the action (``issue_key``, ``revoke_key``...) with
    :meth:`set_change_action` before saving.

    Don't use ``QuerySet.update()`` on these models: it would change rows unlogged.
    """

    change_logged_fields: ClassVar[tuple[str, ...]] = ()
    # Set on instances: the logged fields as last saved or loaded, the action the next
    # save records, and (during an M2M edit) the links before it (``signals``).
    _change_snapshot: dict[str, Any] | None
    _pending_change_action: str | None
    _m2m_before: dict[str, list[Any]]

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        from control_plane.changes.services import record_change

        adding = self._state.adding
        before = None if adding else getattr(self, "_change_snapshot", None)
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            super().save(*args, **kwargs)
            after = self.snapshot()
            action = getattr(self, "_pending_change_action", None)
            if adding or action or before != after:
                default = ChangeAction.CREATE if adding else ChangeAction.UPDATE
                record_change(self, action or default, before, after)
        self._change_snapshot = after
        self._pending_change_action = None

    @classmethod
    def from_db(
        cls, db: str | None, field_names: Collection[str], values: Collection[Any], **kwargs: Any
    ) -> Self:
        # **kwargs: later Django versions add keyword-only arguments (fetch_mode).
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._change_snapshot = instance.snapshot()
        return instance

    def snapshot(self) -> dict[str, Any]:
        """The logged fields as JSON values (a foreign key as its id, M2M left out)."""
        data: dict[str, Any] = {}
        for name in self.change_logged_fields:
            field = self._meta.get_field(name)
            if field.many_to_many:
                continue
            attname = getattr(field, "attname", name)
            if attname not in self.__dict__:
                continue  # deferred: not loaded, so not known to have changed
            data[name] = _json_value(getattr(self, attname))
        return data

    def set_change_action(self, action: str) -> None:
        """Name the action the next save records (default: create or update)."""
        self._pending_change_action = action
