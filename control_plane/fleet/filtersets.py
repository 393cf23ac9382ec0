"""API filters for nodes and releases."""

import django_filters

from control_plane.fleet.models import ConfigRelease, Node


class NodeFilterSet(django_filters.FilterSet):
    health_status = django_filters.CharFilter(field_name="state__health_status")
    pool = django_filters.CharFilter(field_name="pool__name")

    class Meta:
        model = Node
        fields = {"name": ["exact"], "enabled": ["exact"], "draining": ["exact"]}


class ConfigReleaseFilterSet(django_filters.FilterSet):
    node = django_filters.CharFilter(field_name="node__name")

    class Meta:
        model = ConfigRelease
        fields = {"status": ["exact"], "version": ["exact", "gte"], "created_at": ["gte", "lte"]}
