"""The change trail over the API: list and read, nothing else."""

from rest_framework import viewsets

from control_plane.changes.api.serializers import ObjectChangeSerializer
from control_plane.changes.filtersets import ObjectChangeFilterSet
from control_plane.changes.models import ObjectChange


class ObjectChangeViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = ObjectChange.objects.select_related("changed_object_type")
    serializer_class = ObjectChangeSerializer
    filterset_class = ObjectChangeFilterSet
    search_fields = ("object_repr", "user_name")
    ordering_fields = ("time",)
