"""Querysets for knowledge bases and their catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Count, Sum

if TYPE_CHECKING:
    from control_plane.knowledge.models import KnowledgeBase, KnowledgeDocument


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
