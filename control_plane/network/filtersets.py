"""API filters for peers and gateway releases (django-filter)."""

from __future__ import annotations

import django_filters
from django.db.models import Q
from django.utils import timezone

from control_plane.network.choices import PeerStatus
from control_plane.network.models import GatewayRelease, Peer
from control_plane.network.querysets import PeerQuerySet


class PeerFilterSet(django_filters.FilterSet):
    client = django_filters.CharFilter(field_name="client__slug")
    gateway = django_filters.CharFilter(field_name="gateway__name")
    status = django_filters.ChoiceFilter(choices=PeerStatus.choices, method="filter_status")

    class Meta:
        model = Peer
        fields = {"enabled": ["exact"], "address_v4": ["exact"], "created_at": ["gte", "lte"]}

    def filter_status(self, queryset: PeerQuerySet, name: str, value: str) -> PeerQuerySet:
        now = timezone.now()
        if value == PeerStatus.ACTIVE:
            return queryset.active(now)
        if value == PeerStatus.DISABLED:
            return queryset.filter(enabled=False)
        if value == PeerStatus.EXPIRED:
            return queryset.filter(enabled=True, expires_at__lte=now)
        return queryset.filter(enabled=True, client__is_active=False).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class GatewayReleaseFilterSet(django_filters.FilterSet):
    gateway = django_filters.CharFilter(field_name="gateway__name")

    class Meta:
        model = GatewayRelease
        fields = {"status": ["exact"], "version": ["exact", "gte"], "created_at": ["gte", "lte"]}
