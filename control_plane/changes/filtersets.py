"""API filters for the change trail."""

import django_filters

from control_plane.changes.models import ObjectChange


class ObjectChangeFilterSet(django_filters.FilterSet):
    object_type = django_filters.CharFilter(field_name="changed_object_type__model")
    user = django_filters.CharFilter(field_name="user_name")

    class Meta:
        model = ObjectChange
        fields = {
            "action": ["exact"],
            "source": ["exact"],
            "changed_object_id": ["exact"],
            "time": ["gte", "lte"],
        }
