"""API view pieces shared by every kind of rollout target: thin, calling core's rollout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer, Serializer
from rest_framework.views import APIView

from control_plane.core.errors import Conflict
from control_plane.core.models import Release, RolloutTarget
from control_plane.core.rollout import RolloutKind, roll_out
from control_plane.core.signing import published_keys


def released(
    kind: RolloutKind[Any, Any, Any],
    releases: list[Release],
    serializer_class: type[BaseSerializer[Any]],
) -> Response:
    """202 with the releases as they stand now."""
    # Without a broker the pushes ran on commit: reload to answer with their outcome.
    field = kind.release_model.target_field
    fresh = kind.release_model.objects.select_related(field, "released_by").filter(
        pk__in=[r.pk for r in releases]
    )
    data = serializer_class(fresh.order_by(f"{field}__name"), many=True).data
    return Response(data, status=status.HTTP_202_ACCEPTED)


class RolloutActionMixin:
    """For a target's viewset: its ``rollout`` action calls :meth:`roll_out_one`."""

    rollout_kind: ClassVar[RolloutKind[Any, Any, Any]]
    release_serializer_class: ClassVar[type[Serializer[Any]]]

    if TYPE_CHECKING:
        # From the viewset this is mixed into (GenericAPIView); its queryset is of targets.
        def get_object(self) -> RolloutTarget: ...

    def roll_out_one(self) -> Response:
        """Build, sign and push the target's document now (409 when it is disabled)."""
        kind = self.rollout_kind
        target = self.get_object()
        if not target.enabled:
            raise Conflict(f"this {kind.name} is disabled", f"{kind.name}_disabled")
        return released(kind, roll_out(kind, [target]), self.release_serializer_class)


class ReleaseViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Releases of one kind. ``POST`` rolls out: a new release per target, pushed by the
    workers (set ``rollout_kind``, ``request_serializer_class`` and its ``targets_field``)."""

    rollout_kind: ClassVar[RolloutKind[Any, Any, Any]]
    request_serializer_class: ClassVar[type[Serializer[Any]]]
    targets_field: ClassVar[str]
    ordering_fields = ("created_at", "version")

    def create(self, request: Request) -> Response:
        serializer = self.request_serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        targets = serializer.validated_data.get(self.targets_field)
        kind = self.rollout_kind
        return released(kind, roll_out(kind, targets or None), self.get_serializer_class())


class KeySetView(APIView):
    """``GET /api/keys/``: the control plane's published key set (public keys only).

    Every key nodes, gateways and auditors may trust, by purpose, with its state's
    ``not_after`` (docs/security.md, "Trust and keys"). Any signed-in operator may read
    it; compare it with the copy the operator handed you."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response(published_keys().document())
