"""API representations of nodes and releases. A release's signed bundle is not exposed:
it carries key hashes, and nodes get it by push, not by download."""

from __future__ import annotations

from rest_framework import serializers

from control_plane.fleet.models import ConfigRelease, Node, NodeState, rollout_state


class NodeStateSerializer(serializers.ModelSerializer):
    class Meta:
        model = NodeState
        fields = (
            "applied_version",
            "last_push_at",
            "last_push_error",
            "health_status",
            "health",
            "health_checked_at",
            "health_error",
        )
        read_only_fields = fields


class NodeSerializer(serializers.ModelSerializer):
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
            "enabled",
            "description",
            "rollout",
            "latest_release",
            "state",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def _state(self, obj: Node) -> NodeState | None:
        try:
            return obj.state
        except NodeState.DoesNotExist:
            return None

    def _latest(self, obj: Node) -> ConfigRelease | None:
        return obj.releases.order_by("-version").first()

    def get_state(self, obj: Node) -> dict | None:
        state = self._state(obj)
        return NodeStateSerializer(state).data if state else None

    def get_latest_release(self, obj: Node) -> dict | None:
        latest = self._latest(obj)
        return ConfigReleaseSerializer(latest).data if latest else None

    def get_rollout(self, obj: Node) -> str:
        return rollout_state(self._latest(obj), self._state(obj))


class ConfigReleaseSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    released_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ConfigRelease
        fields = (
            "id",
            "node",
            "version",
            "status",
            "attempts",
            "last_error",
            "last_attempt_at",
            "applied_at",
            "released_by",
            "created_at",
            "bundle_sha256",
            "model_count",
            "client_count",
        )
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
        disabled = [node.name for node in nodes if not node.enabled]
        if disabled:
            raise serializers.ValidationError(f"Disabled: {', '.join(disabled)}.")
        return nodes
