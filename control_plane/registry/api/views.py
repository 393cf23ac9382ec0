"""Thin API views for model pins and software releases."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from control_plane.registry.api.serializers import (
    ModelPinSerializer,
    SoftwareReleaseDetailSerializer,
    SoftwareReleaseSerializer,
)
from control_plane.registry.filtersets import ModelPinFilterSet, SoftwareReleaseFilterSet
from control_plane.registry.models import ModelPin, SoftwareRelease
from control_plane.registry.services import (
    allow_release,
    disallow_release,
    go_live_now,
    pin_model,
    record_release,
    request_pin_verification,
    roll_back_pin,
)


class ModelPinViewSet(viewsets.ModelViewSet):
    """Pins. Creating one by path queues the hash of its file (``verify`` re-checks it);
    one by source carries the sha256 and size given, and nodes check the file."""

    queryset = ModelPin.objects.prefetch_related("clients", "pools")
    serializer_class = ModelPinSerializer
    filterset_class = ModelPinFilterSet
    search_fields = ("name", "version", "sha256")
    ordering_fields = ("name", "version", "created_at")
    action_permissions = {
        "verify": ["registry.change_modelpin"],
        "rollback": ["registry.change_modelpin"],
        "go_live": ["registry.change_modelpin"],
    }

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = pin_model(
            name=data["name"],
            version=data["version"],
            path=data.get("path", ""),
            source=data.get("source", ""),
            sha256=data.get("sha256", ""),
            size=data.get("size"),
            context_size=data.get("context_size", 2048),
            chat_template=data.get("chat_template", ""),
            gpu_layers=data.get("gpu_layers"),
            clients=data.get("clients"),
            pools=data.get("pools"),
            supersede=data.get("supersede", False),
        )
        # Without a broker the hash was computed on commit, after pin_model returned.
        serializer.instance.refresh_from_db()

    def perform_update(self, serializer: Any) -> None:
        serializer.validated_data.pop("supersede", None)
        serializer.save()

    @extend_schema(request=None, responses={202: ModelPinSerializer})
    @action(detail=True, methods=["post"])
    def verify(self, request: Request, pk: str | None = None) -> Response:
        pin = self.get_object()
        request_pin_verification(pin)
        pin.refresh_from_db()
        return Response(self.get_serializer(pin).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: ModelPinSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Serve the pin this one replaced again, and disable this one (rolled out by
        itself). Answers with the pin that serves now."""
        previous = roll_back_pin(self.get_object())
        return Response(self.get_serializer(previous).data)

    @extend_schema(request=None, responses={200: ModelPinSerializer})
    @action(detail=True, methods=["post"], url_path="go-live")
    def go_live(self, request: Request, pk: str | None = None) -> Response:
        """Force a staged pin live without waiting for its nodes to report it ready (a
        node that is stuck, or a failure you accept); its file must be verified. Nodes
        that have not prepared it load it when the new bundle reaches them."""
        pin = go_live_now(self.get_object())
        return Response(self.get_serializer(pin).data)


class SoftwareReleaseViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Software releases by digest. Recording one does not allow it: ``allow`` and
    ``disallow`` are each an operator's decision of their own in the change trail. A
    release is fixed once recorded (a new build is a new digest), so there is no edit."""

    queryset = SoftwareRelease.objects.all()
    filterset_class = SoftwareReleaseFilterSet
    search_fields = ("digest", "name")
    ordering_fields = ("created_at", "name")
    action_permissions = {
        "allow": ["registry.change_softwarerelease"],
        "disallow": ["registry.change_softwarerelease"],
    }

    def get_serializer_class(self) -> type[SoftwareReleaseSerializer]:
        if self.action == "retrieve":
            return SoftwareReleaseDetailSerializer
        return SoftwareReleaseSerializer

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = record_release(
            digest=data.get("digest", ""),
            name=data.get("name", ""),
            manifest=data.get("manifest"),
        )

    @extend_schema(request=None, responses={200: SoftwareReleaseSerializer})
    @action(detail=True, methods=["post"])
    def allow(self, request: Request, pk: str | None = None) -> Response:
        """Accept nodes that run this release."""
        return Response(self.get_serializer(allow_release(self.get_object())).data)

    @extend_schema(request=None, responses={200: SoftwareReleaseSerializer})
    @action(detail=True, methods=["post"])
    def disallow(self, request: Request, pk: str | None = None) -> Response:
        """Stop accepting nodes that run this release."""
        return Response(self.get_serializer(disallow_release(self.get_object())).data)
