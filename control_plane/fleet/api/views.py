"""Thin API views for nodes and releases (rollout pieces from ``core.api.views``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from control_plane.core.api.views import ReleaseViewSet, RolloutActionMixin
from control_plane.fleet.api.serializers import (
    ConfigReleaseSerializer,
    NodePoolSerializer,
    NodeSerializer,
    RolloutRequestSerializer,
)
from control_plane.fleet.filtersets import ConfigReleaseFilterSet, NodeFilterSet
from control_plane.fleet.models import ConfigRelease, Node, NodePool
from control_plane.fleet.rollout import NODES


class NodePoolViewSet(viewsets.ModelViewSet):
    """Node pools: where clients and model pins are placed, and their capacity."""

    queryset = NodePool.objects.prefetch_related("nodes__state", "clients", "model_pins")
    serializer_class = NodePoolSerializer
    search_fields = ("name", "description")
    ordering_fields = ("name", "created_at")
    filterset_fields = ("kind",)


class NodeViewSet(RolloutActionMixin, viewsets.ModelViewSet):
    queryset = Node.objects.select_related("state", "pool")
    serializer_class = NodeSerializer
    filterset_class = NodeFilterSet
    search_fields = ("name", "management_url")
    ordering_fields = ("name", "created_at")
    action_permissions = {"rollout": ["fleet.add_configrelease"]}
    rollout_kind = NODES
    release_serializer_class = ConfigReleaseSerializer

    @extend_schema(request=None, responses={202: ConfigReleaseSerializer(many=True)})
    @action(detail=True, methods=["post"])
    def rollout(self, request: Request, pk: str | None = None) -> Response:
        """Build, sign and push this node's config now."""
        return self.roll_out_one()


@extend_schema_view(
    create=extend_schema(
        request=RolloutRequestSerializer, responses={202: ConfigReleaseSerializer(many=True)}
    )
)
class ConfigReleaseViewSet(ReleaseViewSet):
    """Releases. ``POST`` rolls out: a new release per node, pushed by the workers."""

    queryset = ConfigRelease.objects.select_related("node", "released_by")
    serializer_class = ConfigReleaseSerializer
    filterset_class = ConfigReleaseFilterSet
    search_fields = ("node__name", "document_sha256")
    rollout_kind = NODES
    request_serializer_class = RolloutRequestSerializer
    targets_field = "nodes"
