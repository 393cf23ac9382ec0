"""API filters for model pins and software releases."""

import django_filters

from control_plane.registry.models import ModelPin, SoftwareRelease


class ModelPinFilterSet(django_filters.FilterSet):
    client = django_filters.CharFilter(field_name="clients__slug")

    class Meta:
        model = ModelPin
        fields = {
            "name": ["exact"],
            "version": ["exact"],
            "enabled": ["exact"],
            "hash_status": ["exact"],
        }


class SoftwareReleaseFilterSet(django_filters.FilterSet):
    class Meta:
        model = SoftwareRelease
        fields = {"digest": ["exact"], "name": ["exact"], "allowed": ["exact"]}
