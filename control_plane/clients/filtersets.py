"""API filters for clients and keys (django-filter)."""

from __future__ import annotations

import django_filters

from control_plane.clients.choices import ApiKeyStatus
from control_plane.clients.models import ApiKey, Client
from control_plane.clients.querysets import ApiKeyQuerySet


class ClientFilterSet(django_filters.FilterSet):
    id = django_filters.CharFilter(field_name="slug")

    class Meta:
        model = Client
        fields = {
            "is_active": ["exact"],
            "embeddings": ["exact"],
            "created_at": ["gte", "lte"],
        }


class ApiKeyFilterSet(django_filters.FilterSet):
    client = django_filters.CharFilter(field_name="client__slug")
    status = django_filters.ChoiceFilter(choices=ApiKeyStatus.choices, method="filter_status")

    class Meta:
        model = ApiKey
        fields = {"prefix": ["exact"], "created_at": ["gte", "lte"]}

    def filter_status(self, queryset: ApiKeyQuerySet, name: str, value: str) -> ApiKeyQuerySet:
        if value == ApiKeyStatus.ACTIVE:
            return queryset.usable()
        if value == ApiKeyStatus.EXPIRED:
            return queryset.expired()
        return queryset.revoked()
