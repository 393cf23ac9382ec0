"""Querysets for knowledge bases and their catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.db import models
from django.db.models import Count, Sum

if TYPE_CHECKING:
    from control_plane.knowledge.models import KnowledgeBase, KnowledgeDocument


class Totals(TypedDict):
    """What :meth:`KnowledgeBaseQuerySet.with_totals` adds (the sums are None with no
    documents)."""

    document_count: int
    chunk_count: int | None
    byte_count: int | None


class KnowledgeBaseQuerySet(models.QuerySet["KnowledgeBase"]):
    def names(self) -> list[str]:
        """The names, sorted: what a client's config bundle lists."""
        return list(self.order_by("name").values_list("name", flat=True))

    def with_totals(self) -> KnowledgeBaseQuerySet:
        return self.annotate(
            document_count=Count("documents", distinct=True),
            chunk_count=Sum("documents__chunks"),
            byte_count=Sum("documents__bytes"),
        )


class KnowledgeDocumentQuerySet(models.QuerySet["KnowledgeDocument"]):
    pass
