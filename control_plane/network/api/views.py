"""Thin API views for pools, gateways, peers and gateway releases."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import transaction
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from control_plane.core.api.views import ReleaseViewSet, RolloutActionMixin
from control_plane.core.errors import Conflict
from control_plane.core.tls import ingress_ca
from control_plane.network.api.serializers import (
    AddressPoolSerializer,
    BackboneMemberSerializer,
    GatewayReleaseSerializer,
    GatewayRolloutSerializer,
    GatewaySerializer,
    PeerDisableSerializer,
    PeerEnableSerializer,
    PeerProvisionSerializer,
    PeerSerializer,
    ProvisionedPeerSerializer,
)
from control_plane.network.backbone import join_backbone
from control_plane.network.filtersets import GatewayReleaseFilterSet, PeerFilterSet
from control_plane.network.models import (
    AddressPool,
    BackboneMember,
    Gateway,
    GatewayRelease,
    Peer,
)
from control_plane.network.rollout import GATEWAYS
from control_plane.network.services import (
    client_config,
    config_qr_svg,
    delete_peer,
    disable_peer,
    enable_peer,
    provision_peer,
)

# A peer's config holds its preshared key: downloading it takes change_peer (admins).
_CONFIG_PERMS = ["network.change_peer"]

_ResponseT = TypeVar("_ResponseT", bound=HttpResponse)


def _no_store(response: _ResponseT) -> _ResponseT:
    response["Cache-Control"] = "no-store"
    return response


class AddressPoolViewSet(viewsets.ModelViewSet):
    queryset = AddressPool.objects.all()
    serializer_class = AddressPoolSerializer
    search_fields = ("name", "ipv4_cidr", "ipv6_cidr")
    ordering_fields = ("name", "created_at")

    def perform_destroy(self, instance: AddressPool) -> None:
        if Gateway.objects.filter(pool=instance).exists():
            raise Conflict("a gateway uses this pool", "pool_in_use")
        if instance.backbone_members.exists():
            raise Conflict("backbone members use this pool", "pool_in_use")
        instance.delete()


class BackboneMemberViewSet(viewsets.ModelViewSet):
    """Backbone members: a gateway or a node joins with its backbone public key (and, for
    a node, the endpoint gateways send to) and gets the pool's next free address."""

    queryset = BackboneMember.objects.select_related("pool", "node", "gateway")
    serializer_class = BackboneMemberSerializer
    search_fields = ("node__name", "gateway__name", "public_key", "address")
    ordering_fields = ("address", "created_at")

    def perform_create(self, serializer: BaseSerializer[BackboneMember]) -> None:
        data = serializer.validated_data
        serializer.instance = join_backbone(
            data["pool"],
            public_key=data["public_key"],
            node=data.get("node"),
            gateway=data.get("gateway"),
            endpoint=data.get("endpoint", ""),
            listen_port=data.get("listen_port", 51821),
            interface_name=data.get("interface_name", "sanctum-bb"),
        )

    def perform_update(self, serializer: BaseSerializer[BackboneMember]) -> None:
        with transaction.atomic():
            serializer.save()


class GatewayViewSet(RolloutActionMixin, viewsets.ModelViewSet):
    queryset = Gateway.objects.select_related("pool", "state").prefetch_related("upstreams__node")
    serializer_class = GatewaySerializer
    search_fields = ("name", "public_endpoint", "management_url")
    ordering_fields = ("name", "created_at")
    action_permissions = {"rollout": ["network.add_gatewayrelease"]}
    rollout_kind = GATEWAYS
    release_serializer_class = GatewayReleaseSerializer

    def perform_create(self, serializer: BaseSerializer[Gateway]) -> None:
        with transaction.atomic():
            serializer.save()

    def perform_update(self, serializer: BaseSerializer[Gateway]) -> None:
        with transaction.atomic():
            serializer.save()

    def perform_destroy(self, instance: Gateway) -> None:
        if instance.peers.exists():
            raise Conflict("the gateway has peers; delete them first", "gateway_has_peers")
        instance.delete()

    @extend_schema(request=None, responses={202: GatewayReleaseSerializer(many=True)})
    @action(detail=True, methods=["post"])
    def rollout(self, request: Request, pk: str | None = None) -> Response:
        """Build, sign and push this gateway's config now."""
        return self.roll_out_one()


class PeerViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Peers: provision (the answer holds the config, once with a generated private
    key), list, rename or change expiry, disable, enable, delete (frees the address),
    and download the config file or its QR code."""

    queryset = Peer.objects.select_related("client", "gateway__pool")
    serializer_class = PeerSerializer
    filterset_class = PeerFilterSet
    search_fields = ("name", "public_key", "address_v4", "address_v6", "client__slug")
    ordering_fields = ("created_at", "address_v4", "last_handshake_at", "expires_at")
    action_permissions = {
        "disable": ["network.change_peer"],
        "enable": ["network.change_peer"],
        "config": _CONFIG_PERMS,
        "qr": _CONFIG_PERMS,
    }

    @extend_schema(
        request=PeerProvisionSerializer,
        responses={
            201: ProvisionedPeerSerializer,
            409: OpenApiResponse(description="The gateway's address pool is exhausted."),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = PeerProvisionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        provisioned = provision_peer(
            data["client"],
            data["gateway"],
            public_key=data["public_key"] or None,
            name=data["name"],
            expires_at=data["expires_at"],
        )
        body = ProvisionedPeerSerializer(provisioned.peer).data
        body["config"] = provisioned.config
        body["ingress_ca"] = ingress_ca().certificate_pem  # what its TLS client verifies with
        return _no_store(Response(body, status=status.HTTP_201_CREATED))

    def perform_destroy(self, instance: Peer) -> None:
        delete_peer(instance)

    @extend_schema(request=PeerDisableSerializer, responses={200: PeerSerializer})
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str | None = None) -> Response:
        """Take the peer out of its gateway's config (at the next rollout), with a reason."""
        serializer = PeerDisableSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        peer = disable_peer(self.get_object(), reason=serializer.validated_data["reason"])
        return Response(PeerSerializer(peer).data)

    @extend_schema(request=PeerEnableSerializer, responses={200: PeerSerializer})
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str | None = None) -> Response:
        serializer = PeerEnableSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        peer = enable_peer(self.get_object(), expires_at=serializer.validated_data["expires_at"])
        return Response(PeerSerializer(peer).data)

    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def config(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The peer's wg-quick file. Its private key is not in it (never stored)."""
        peer = self.get_object()
        response = HttpResponse(client_config(peer), content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{_file_name(peer)}.conf"'
        return _no_store(response)

    @extend_schema(responses={(200, "image/svg+xml"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def qr(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The config as a QR code (SVG), for the WireGuard apps' "scan" import."""
        peer = self.get_object()
        response = HttpResponse(config_qr_svg(client_config(peer)), content_type="image/svg+xml")
        response["Content-Disposition"] = f'inline; filename="{_file_name(peer)}.svg"'
        return _no_store(response)

    @extend_schema(responses={(200, "application/x-pem-file"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def ca(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The ingress CA certificate the peer's HTTPS client verifies the gateway with
        (its SHA-256 is also in the config file's comment, to pin or compare)."""
        self.get_object()
        response = HttpResponse(ingress_ca().certificate_pem, content_type="application/x-pem-file")
        response["Content-Disposition"] = 'attachment; filename="sanctum-ingress-ca.crt"'
        return response


def _file_name(peer: Peer) -> str:
    # wg-quick names the interface after the file: at most 15 characters.
    return f"sanctum{peer.pk}"[:15]


@extend_schema_view(
    create=extend_schema(
        request=GatewayRolloutSerializer, responses={202: GatewayReleaseSerializer(many=True)}
    )
)
class GatewayReleaseViewSet(ReleaseViewSet):
    """Gateway releases. ``POST`` rolls out: a new release per gateway, pushed by workers."""

    queryset = GatewayRelease.objects.select_related("gateway", "released_by")
    serializer_class = GatewayReleaseSerializer
    filterset_class = GatewayReleaseFilterSet
    search_fields = ("gateway__name", "document_sha256")
    rollout_kind = GATEWAYS
    request_serializer_class = GatewayRolloutSerializer
    targets_field = "gateways"
