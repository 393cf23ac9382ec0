"""API representations of pools, gateways, peers and gateway releases.

No serializer carries a preshared key: it leaves the control plane only inside a peer's
config download (and sealed, in the gateway's config).
"""

from __future__ import annotations

from rest_framework import serializers

from control_plane.clients.models import Client
from control_plane.core.api.serializers import (
    ReleaseSerializer,
    TargetStateFieldMixin,
    TargetStateSerializer,
    refuse_disabled,
)
from control_plane.core.models import RELEASE_FIELDS
from control_plane.fleet.models import Node
from control_plane.network.choices import PeerStatus, PoolPurpose
from control_plane.network.models import (
    AddressPool,
    BackboneMember,
    Gateway,
    GatewayRelease,
    GatewayState,
    GatewayUpstream,
    Peer,
    overlapping_pool,
)


class AddressPoolSerializer(serializers.ModelSerializer):
    gateway_addresses = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text="The gateway's own."
    )

    class Meta:
        model = AddressPool
        fields = (
            "id",
            "name",
            "purpose",
            "ipv4_cidr",
            "ipv6_cidr",
            "gateway_addresses",
            "description",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def validate(self, attrs: dict) -> dict:
        instance = self.instance
        if instance is not None:
            purpose_changes = attrs.get("purpose", instance.purpose) != instance.purpose
            in_use = instance.peers.exists() or instance.backbone_members.exists()
            if purpose_changes and in_use:
                raise serializers.ValidationError({"purpose": "The pool is in use."})
            if in_use:
                for field in ("ipv4_cidr", "ipv6_cidr"):
                    if field in attrs and attrs[field] != getattr(instance, field):
                        raise serializers.ValidationError(
                            {field: "Addresses of this network are in use: it can't change."}
                        )
        for field in ("ipv4_cidr", "ipv6_cidr"):
            cidr = attrs.get(field, getattr(instance, field, ""))
            other = overlapping_pool(cidr, exclude=instance.pk if instance else None)
            if other is not None:
                # Two pools over the same addresses would route one's traffic to the
                # other's holder (a backbone node answering for a client's tunnel).
                raise serializers.ValidationError({field: f"It overlaps pool {other.name}."})
        return attrs


class GatewayUpstreamSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", queryset=Node.objects.all())

    class Meta:
        model = GatewayUpstream
        fields = ("node", "host", "port")


class GatewayStateSerializer(TargetStateSerializer):
    class Meta(TargetStateSerializer.Meta):
        model = GatewayState


class GatewaySerializer(TargetStateFieldMixin, serializers.ModelSerializer):
    state_serializer_class = GatewayStateSerializer
    pool = serializers.SlugRelatedField(slug_field="name", queryset=AddressPool.objects.all())
    upstreams = GatewayUpstreamSerializer(many=True, required=False)
    state = serializers.SerializerMethodField()
    api_base = serializers.CharField(read_only=True)

    class Meta:
        model = Gateway
        fields = (
            "id",
            "name",
            "public_endpoint",
            "public_key",
            "management_url",
            "signing_key",
            "pool",
            "interface_name",
            "listen_port",
            "http_port",
            "https_port",
            "plain_http",
            "api_base",
            "upstreams",
            "enabled",
            "description",
            "state",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def validate(self, attrs: dict) -> dict:
        pool = attrs.get("pool")
        if pool is not None and (self.instance is None or self.instance.pool_id != pool.pk):
            if Gateway.objects.filter(pool=pool).exists():
                raise serializers.ValidationError({"pool": "Another gateway has this pool."})
            if self.instance is not None and self.instance.peers.exists():
                raise serializers.ValidationError(
                    {"pool": "The gateway's peers hold addresses of its pool: it can't change."}
                )
        if pool is not None and pool.purpose != PoolPurpose.TUNNEL:
            raise serializers.ValidationError({"pool": "Choose a pool for client tunnels."})
        nodes = [u["node"].name for u in attrs.get("upstreams", [])]
        if len(nodes) != len(set(nodes)):
            raise serializers.ValidationError({"upstreams": "Each node at most once."})
        return attrs

    def _set_upstreams(self, gateway: Gateway, upstreams: list[dict] | None) -> None:
        if upstreams is None:
            return
        wanted = {u["node"].pk: u for u in upstreams}
        for existing in gateway.upstreams.all():
            if existing.node_id not in wanted:
                existing.delete()
        for node_id, data in wanted.items():
            row = gateway.upstreams.filter(node_id=node_id).first() or GatewayUpstream(
                gateway=gateway, node=data["node"]
            )
            row.host, row.port = data["host"], data["port"]
            row.save()

    def create(self, validated_data: dict) -> Gateway:
        upstreams = validated_data.pop("upstreams", [])
        gateway = super().create(validated_data)
        self._set_upstreams(gateway, upstreams)
        return gateway

    def update(self, instance: Gateway, validated_data: dict) -> Gateway:
        upstreams = validated_data.pop("upstreams", None)
        gateway = super().update(instance, validated_data)
        self._set_upstreams(gateway, upstreams)
        return gateway


class BackboneMemberSerializer(serializers.ModelSerializer):
    """A gateway or a node on the backbone; its address comes from the pool on create."""

    pool = serializers.SlugRelatedField(
        slug_field="name", queryset=AddressPool.objects.filter(purpose=PoolPurpose.BACKBONE)
    )
    node = serializers.SlugRelatedField(
        slug_field="name", queryset=Node.objects.all(), required=False, allow_null=True
    )
    gateway = serializers.SlugRelatedField(
        slug_field="name", queryset=Gateway.objects.all(), required=False, allow_null=True
    )
    name = serializers.CharField(read_only=True)

    class Meta:
        model = BackboneMember
        fields = (
            "id",
            "name",
            "pool",
            "node",
            "gateway",
            "public_key",
            "address",
            "endpoint",
            "listen_port",
            "interface_name",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("address", "created_at", "updated_at")

    def validate(self, attrs: dict) -> dict:
        if self.instance is not None:
            for field in ("pool", "node", "gateway"):
                if field in attrs and attrs[field] != getattr(self.instance, field):
                    raise serializers.ValidationError(
                        {field: "Remove the member and add it again to change this."}
                    )
        return attrs


class PeerSerializer(serializers.ModelSerializer):
    client: serializers.SlugRelatedField[Client] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    gateway: serializers.SlugRelatedField[Gateway] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )
    status = serializers.SerializerMethodField()

    class Meta:
        model = Peer
        # A tuple of any length: ProvisionedPeerSerializer adds to it.
        fields: tuple[str, ...] = (
            "id",
            "client",
            "gateway",
            "name",
            "public_key",
            "key_generated",
            "address_v4",
            "address_v6",
            "status",
            "enabled",
            "expires_at",
            "disabled_reason",
            "disabled_at",
            "last_handshake_at",
            "created_at",
            "updated_at",
        )
        read_only_fields = (
            "id",
            "public_key",
            "key_generated",
            "address_v4",
            "address_v6",
            "enabled",
            "disabled_reason",
            "disabled_at",
            "last_handshake_at",
            "created_at",
            "updated_at",
        )

    def get_status(self, obj: Peer) -> str:
        return PeerStatus(obj.status()).value


class PeerProvisionSerializer(serializers.Serializer):
    client = serializers.SlugRelatedField(slug_field="slug", queryset=Client.objects.all())
    gateway = serializers.SlugRelatedField(slug_field="name", queryset=Gateway.objects.all())
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    public_key = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        default="",
        help_text="The client's own WireGuard public key (preferred). Without it a key "
        "pair is made and its private key is in this answer's config, once.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ProvisionedPeerSerializer(PeerSerializer):
    config = serializers.CharField(
        read_only=True,
        help_text="The wg-quick file. With a generated key pair it holds the private key: "
        "shown in this answer only, not stored.",
    )

    class Meta(PeerSerializer.Meta):
        fields = (*PeerSerializer.Meta.fields, "config")


class PeerDisableSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200)


class PeerEnableSerializer(serializers.Serializer):
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class GatewayReleaseSerializer(ReleaseSerializer):
    gateway: serializers.SlugRelatedField[Gateway] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )

    class Meta:
        model = GatewayRelease
        fields = ("id", "gateway", *RELEASE_FIELDS, "peer_count")
        read_only_fields = fields


class GatewayRolloutSerializer(serializers.Serializer):
    gateways = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Gateway.objects.all(),
        many=True,
        required=False,
        help_text="Gateway names (default: every enabled gateway).",
    )

    def validate_gateways(self, gateways: list[Gateway]) -> list[Gateway]:
        refuse_disabled(gateways)
        return gateways
