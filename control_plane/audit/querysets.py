"""Querysets for receipts and the ledger: reads as usual, no bulk edits or deletes."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from django.db import models

if TYPE_CHECKING:
    from control_plane.audit.models import Receipt, TreeHead

_ModelT = TypeVar("_ModelT", bound=models.Model)


class AppendOnlyError(TypeError):
    """Something tried to change or delete a row of the append-only ledger."""


class AppendOnlyQuerySet(models.QuerySet[_ModelT]):
    """A queryset that refuses ``update()`` and ``delete()``: rows are only ever added.

    The database refuses the same with triggers (migration 0002), for whatever goes
    around the ORM.
    """

    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(f"{self.model._meta.label} is append-only: no update")

    def delete(self) -> NoReturn:
        raise AppendOnlyError(f"{self.model._meta.label} is append-only: no delete")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> NoReturn:
        raise AppendOnlyError(f"{self.model._meta.label} is append-only: no update")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(f"{self.model._meta.label} is append-only: no update")

    # The paths Django's delete collector and ``Model.save`` take underneath.
    def _raw_delete(self, using: Any) -> NoReturn:
        raise AppendOnlyError(f"{self.model._meta.label} is append-only: no delete")

    def _update(self, values: Any) -> NoReturn:
        raise AppendOnlyError(f"{self.model._meta.label} is append-only: no update")


class ReceiptQuerySet(AppendOnlyQuerySet["Receipt"]):
    def for_client(self, client_id: str) -> ReceiptQuerySet:
        return self.filter(client=client_id)

    def in_period(self, since: datetime | None, until: datetime | None) -> ReceiptQuerySet:
        """Receipts with ``since <= ended_at < until`` (either end open when ``None``)."""
        qs = self
        if since is not None:
            qs = qs.filter(ended_at__gte=since)
        if until is not None:
            qs = qs.filter(ended_at__lt=until)
        return qs

    def in_tree(self, size: int) -> ReceiptQuerySet:
        """Receipts whose leaf is in the tree of the first ``size`` leaves."""
        return self.filter(log_index__lt=size)


class TreeHeadQuerySet(AppendOnlyQuerySet["TreeHead"]):
    def latest_head(self) -> TreeHead | None:
        return self.order_by("-size").first()


# Named managers rather than ``as_manager()``: Receipt and TreeHead replace the manager
# they inherit from AppendOnlyModel, and the type checker needs a type to check that by.
AppendOnlyManager = models.Manager.from_queryset(AppendOnlyQuerySet)
ReceiptManager = models.Manager.from_queryset(ReceiptQuerySet)
TreeHeadManager = models.Manager.from_queryset(TreeHeadQuerySet)
