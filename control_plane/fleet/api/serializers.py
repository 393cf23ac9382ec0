"""API representations of nodes and releases. A release's signed bundle is not exposed:
it carries key hashes, and nodes get it by push, not by download."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from control_plane.core.api.serializers import (
    ReleaseSerializer,
    TargetStateFieldMixin,
    TargetStateSerializer,
    refuse_disabled,
)
from control_plane.core.models import RELEASE_FIELDS, rollout_state
from control_plane.fleet.models import ConfigRelease, Node, NodePool, NodeState
from control_plane.fleet.placement import pool_capacity, save_pool


class NodePoolSerializer(serializers.ModelSerializer):
    nodes: serializers.SlugRelatedField[Node] = serializers.SlugRelatedField(
        slug_field="name", many=True, read_only=True
    )
    clients: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", many=True, read_only=True
    )
    models = serializers.SerializerMethodField(help_text="Enabled model pins placed on it.")
    capacity = serializers.SerializerMethodField(
        help_text="Its nodes' slots and load, from their last health reports."
    )

    class Meta:
        model = NodePool
        fields = (
            "id",
            "name",
            "kind",
            "description",
            "nodes",
            "clients",
            "models",
            "capacity",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def validate(self, attrs: dict) -> dict:
        pool = self.instance
        if pool is not None:
            NodePool(
                pk=pool.pk, name=attrs.get("name", pool.name), kind=attrs.get("kind", pool.kind)
            ).clean()
        return attrs

    def update(self, instance: NodePool, validated_data: dict) -> NodePool:
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return save_pool(instance)

    def get_models(self, obj: NodePool) -> list[str]:
        return sorted({f"{p.name}@{p.version}" for p in obj.model_pins.all() if p.enabled})

    def get_capacity(self, obj: NodePool) -> dict:
        return pool_capacity(obj)


class NodeStateSerializer(TargetStateSerializer):
    class Meta(TargetStateSerializer.Meta):
        model = NodeState


class NodeSerializer(TargetStateFieldMixin, serializers.ModelSerializer):
    state_serializer_class = NodeStateSerializer
    pool = serializers.SlugRelatedField(
        slug_field="name",
        queryset=NodePool.objects.all(),
        required=False,
        help_text="Its node pool (default: the pool named default).",
    )
    key_id = serializers.CharField(source="public_key_id", read_only=True)
    state = serializers.SerializerMethodField()
    latest_release = serializers.SerializerMethodField()
    rollout = serializers.SerializerMethodField()

    class Meta:
        model = Node
        fields = (
            "id",
            "name",
            "management_url",
            "public_key",
            "key_id",
            "pool",
            "draining",
            "enabled",
            "description",
            "rollout",
            "latest_release",
            "state",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def _latest(self, obj: Node) -> ConfigRelease | None:
        return obj.releases.order_by("-version").first()

    def get_latest_release(self, obj: Node) -> dict | None:
        latest = self._latest(obj)
        return ConfigReleaseSerializer(latest).data if latest else None

    def get_rollout(self, obj: Node) -> str:
        latest, state = self._latest(obj), obj.current_state()
        return rollout_state(
            latest.version if latest else None,
            latest.status if latest else None,
            state.applied_version if state else None,
        )


class ConfigReleaseSerializer(ReleaseSerializer):
    node: serializers.SlugRelatedField[Node] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )

    class Meta:
        model = ConfigRelease
        fields = ("id", "node", *RELEASE_FIELDS, "model_count", "client_count")
        read_only_fields = fields


class RolloutRequestSerializer(serializers.Serializer):
    nodes = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Node.objects.all(),
        many=True,
        required=False,
        help_text="Node names (default: every enabled node).",
    )

    def validate_nodes(self, nodes: list[Node]) -> list[Node]:
        refuse_disabled(nodes)
        return nodes
