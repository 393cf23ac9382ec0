"""API filters for knowledge bases and their documents."""

from __future__ import annotations

import django_filters

from control_plane.knowledge.models import KnowledgeBase, KnowledgeDocument


class KnowledgeBaseFilterSet(django_filters.FilterSet):
    client = django_filters.CharFilter(field_name="client__slug")

    class Meta:
        model = KnowledgeBase
        fields = {"name": ["exact"], "created_at": ["gte", "lte"]}


class KnowledgeDocumentFilterSet(django_filters.FilterSet):
    client = django_filters.CharFilter(field_name="knowledge_base__client__slug")

    class Meta:
        model = KnowledgeDocument
        fields = {"knowledge_base": ["exact"], "name": ["exact"], "loaded_at": ["gte", "lte"]}
