"""API filters for model pins."""

import django_filters

from control_plane.registry.models import ModelPin


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
