"""API representations of clients and keys. No serializer ever carries a key's hash."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.validators import UniqueValidator

from control_plane.clients.choices import ApiKeyStatus
from control_plane.clients.models import ApiKey, Client
from control_plane.clients.services import save_client
from control_plane.clients.validators import bundle_name_validator
from control_plane.fleet.models import NodePool, default_pool_id
from control_plane.fleet.placement import check_client_placement, sharing_with


class ClientSerializer(serializers.ModelSerializer):
    id = serializers.CharField(
        source="slug",
        max_length=128,
        validators=[
            bundle_name_validator,
            UniqueValidator(queryset=Client.objects.all(), message="This client id is taken."),
        ],
        help_text="The client id nodes, receipts and auditors use.",
    )
    models = serializers.SerializerMethodField(help_text="Names of the models it may use.")
    pool = serializers.SlugRelatedField(
        slug_field="name",
        queryset=NodePool.objects.all(),
        required=False,
        help_text="The node pool that serves it (default: the pool named default).",
    )
    shares_hardware_with = serializers.SerializerMethodField(
        help_text="Other clients placed on the same pool: their sessions may run on the "
        "same nodes, batched beside this one's."
    )
    knowledge_bases = serializers.SerializerMethodField(
        help_text="Names of its knowledge bases (made and loaded under /api/knowledge-bases/)."
    )

    class Meta:
        model = Client
        fields = (
            "id",
            "name",
            "description",
            "is_active",
            "pool",
            "shares_hardware_with",
            "embeddings",
            "knowledge_bases",
            "max_sessions",
            "max_tokens_per_request",
            "requests_per_minute",
            "tokens_per_minute",
            "tokens_per_day",
            "tokens_per_month",
            "max_running_generations",
            "max_queued_generations",
            "max_parked_kv_mib",
            "models",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def validate_id(self, value: str) -> str:
        if self.instance is not None and value != self.instance.slug:
            # Receipts and nodes know the client by this id: it never changes.
            raise serializers.ValidationError("A client's id can't change.")
        return value

    def validate(self, attrs: dict) -> dict:
        pool = attrs.get("pool") or (
            self.instance.pool if self.instance else NodePool.objects.get(pk=default_pool_id())
        )
        check_client_placement(pool, self.instance or Client(pool=pool))
        attrs["pool"] = pool
        return attrs

    def create(self, validated_data: dict) -> Client:
        return save_client(Client(**validated_data))

    def update(self, instance: Client, validated_data: dict) -> Client:
        for name, value in validated_data.items():
            setattr(instance, name, value)
        return save_client(instance)

    def get_shares_hardware_with(self, obj: Client) -> list[str]:
        return sharing_with(obj)

    def get_knowledge_bases(self, obj: Client) -> list[str]:
        return sorted(kb.name for kb in obj.knowledge_bases.all())

    def get_models(self, obj: Client) -> list[str]:
        return sorted({pin.name for pin in obj.model_pins.all() if pin.enabled})


class QuotaUseSerializer(serializers.Serializer):
    period = serializers.ChoiceField(choices=["day", "month"])
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    tokens = serializers.IntegerField(help_text="Prompt and completion tokens, from receipts.")
    quota = serializers.IntegerField(allow_null=True)
    remaining = serializers.IntegerField(allow_null=True)


class ClientUsageSerializer(serializers.Serializer):
    client = serializers.CharField()
    requests_per_minute = serializers.IntegerField(allow_null=True)
    tokens_per_minute = serializers.IntegerField(allow_null=True)
    nodes = serializers.IntegerField(help_text="Nodes that each enforce a share of the limits.")
    quotas = QuotaUseSerializer(many=True)


class ApiKeySerializer(serializers.ModelSerializer):
    client: serializers.SlugRelatedField[Client] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    status = serializers.ChoiceField(choices=ApiKeyStatus.choices, read_only=True)

    class Meta:
        model = ApiKey
        # A tuple of any length: IssuedApiKeySerializer adds to it.
        fields: tuple[str, ...] = (
            "id",
            "client",
            "name",
            "prefix",
            "status",
            "created_at",
            "last_rotated_at",
            "expires_at",
            "revoked_at",
            "revoked_reason",
        )
        read_only_fields = (
            "id",
            "prefix",
            "created_at",
            "last_rotated_at",
            "revoked_at",
            "revoked_reason",
        )


class ApiKeyIssueSerializer(serializers.Serializer):
    client = serializers.SlugRelatedField(slug_field="slug", queryset=Client.objects.all())
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class IssuedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(
        read_only=True, help_text="The API key. Shown in this answer only; not stored."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "key")


class ApiKeyRevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
