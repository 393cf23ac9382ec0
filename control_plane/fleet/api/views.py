"""Thin API views for nodes and releases."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from control_plane.fleet.api.serializers import (
    ConfigReleaseSerializer,
    NodeSerializer,
    RolloutRequestSerializer,
)
from control_plane.fleet.filtersets import ConfigReleaseFilterSet, NodeFilterSet
from control_plane.fleet.models import ConfigRelease, Node
from control_plane.fleet.services import roll_out


def _released(releases: list[ConfigRelease]) -> Response:
    # Without a broker the pushes ran on commit: reload to answer with their outcome.
    fresh = ConfigRelease.objects.select_related("node", "released_by").filter(
        pk__in=[r.pk for r in releases]
    )
    data = ConfigReleaseSerializer(fresh.order_by("node__name"), many=True).data
    return Response(data, status=status.HTTP_202_ACCEPTED)


class NodeViewSet(viewsets.ModelViewSet):
    queryset = Node.objects.select_related("state")
    serializer_class = NodeSerializer
    filterset_class = NodeFilterSet
    search_fields = ("name", "management_url")
    ordering_fields = ("name", "created_at")
    action_permissions = {"rollout": ["fleet.add_configrelease"]}

    @extend_schema(request=None, responses={202: ConfigReleaseSerializer(many=True)})
    @action(detail=True, methods=["post"])
    def rollout(self, request: Request, pk: str | None = None) -> Response:
        """Build, sign and push this node's config now."""
        node = self.get_object()
        if not node.enabled:
            return Response({"detail": "This node is disabled."}, status=status.HTTP_409_CONFLICT)
        return _released(roll_out([node]))


class ConfigReleaseViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Releases. ``POST`` rolls out: a new release per node, pushed by the workers."""

    queryset = ConfigRelease.objects.select_related("node", "released_by")
    serializer_class = ConfigReleaseSerializer
    filterset_class = ConfigReleaseFilterSet
    search_fields = ("node__name", "bundle_sha256")
    ordering_fields = ("created_at", "version")

    @extend_schema(
        request=RolloutRequestSerializer, responses={202: ConfigReleaseSerializer(many=True)}
    )
    def create(self, request: Request) -> Response:
        serializer = RolloutRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        nodes = serializer.validated_data.get("nodes")
        return _released(roll_out(nodes or None))
