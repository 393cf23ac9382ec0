"""API representation of model pins and software releases."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from control_plane.clients.models import Client
from control_plane.fleet.models import NodePool
from control_plane.registry.models import ModelPin, SoftwareRelease
from control_plane.registry.services import staging_report

IMMUTABLE = ("name", "version", "path", "source", "sha256", "size")


class StagingSerializer(serializers.Serializer):
    """A staged pin's way to going live (``staging_report``): null for a pin not staged."""

    ready = serializers.BooleanField()
    ready_on = serializers.ListField(child=serializers.CharField(), help_text="nodes ready")
    waiting_on = serializers.DictField(
        child=serializers.CharField(), help_text="node -> what it reports instead"
    )
    not_counted = serializers.DictField(
        child=serializers.CharField(), help_text="node -> why it does not hold the pin back"
    )


class ModelPinSerializer(serializers.ModelSerializer):
    clients = serializers.SlugRelatedField(
        slug_field="slug", queryset=Client.objects.all(), many=True, required=False
    )
    pools = serializers.SlugRelatedField(
        slug_field="name",
        queryset=NodePool.objects.all(),
        many=True,
        required=False,
        help_text="The node pools whose nodes load it (default: the superseded pin's, else "
        "its clients' pools, else the default pool).",
    )
    supersede = serializers.BooleanField(
        write_only=True,
        required=False,
        default=False,
        help_text="On create: replace the model's current pin. The new pin is staged and "
        "takes its place when its file's hash is verified (the current one serves until then).",
    )

    staging = serializers.SerializerMethodField(
        help_text="A staged pin: whether it may go live, the nodes that report it ready, "
        "those it waits for (with what they report) and those not counted (not answering "
        "health). Null for a pin that is not staged."
    )

    class Meta:
        model = ModelPin
        fields = (
            "id",
            "name",
            "version",
            "path",
            "source",
            "size",
            "sha256",
            "hash_status",
            "hash_error",
            "hash_checked_at",
            "context_size",
            "chat_template",
            "gpu_layers",
            "clients",
            "pools",
            "enabled",
            "staged",
            "supersedes",
            "supersede",
            "staging",
            "created_at",
            "updated_at",
        )
        read_only_fields = (
            "staged",
            "supersedes",
            "hash_status",
            "hash_error",
            "hash_checked_at",
            "created_at",
            "updated_at",
        )
        # The one-enabled-pin rule is checked in validate(), with a field error; the
        # (name, version) pair in the service.
        validators: list[Any] = []

    @extend_schema_field(StagingSerializer(allow_null=True))
    def get_staging(self, pin: ModelPin) -> dict[str, object] | None:
        return staging_report(pin).as_dict() if pin.staged else None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        pin = self.instance
        if pin is not None:
            errors = {
                name: "Fixed once pinned; pin a new version instead."
                for name in IMMUTABLE
                if name in attrs and attrs[name] != getattr(pin, name)
            }
            if errors:
                raise serializers.ValidationError(errors)
            if attrs.get("enabled") and not pin.enabled:
                other = ModelPin.objects.filter(name=pin.name, enabled=True).exclude(pk=pin.pk)
                if other.exists():
                    raise serializers.ValidationError(
                        {"enabled": f"{pin.name} already has an enabled pin; disable it first."}
                    )
        return attrs


class SoftwareReleaseSerializer(serializers.ModelSerializer):
    """A release in a list: everything but the manifest (whether it has one)."""

    digest = serializers.CharField(
        required=False,
        max_length=64,
        help_text="SHA-256 of the release manifest (`sanctum release-manifest` prints it); "
        "may be left out when the manifest is given.",
    )
    manifest = serializers.JSONField(
        write_only=True,
        required=False,
        allow_null=True,
        help_text="The release manifest (`sanctum release-manifest --out FILE`): the digest "
        "is checked against it.",
    )
    has_manifest = serializers.SerializerMethodField()

    class Meta:
        model = SoftwareRelease
        fields = (
            "id",
            "digest",
            "name",
            "manifest",
            "has_manifest",
            "allowed",
            "created_at",
            "allowed_at",
            "disallowed_at",
        )
        read_only_fields = ("allowed", "created_at", "allowed_at", "disallowed_at")
        # Uniqueness and the digest-manifest match are the service's (record_release).
        validators: list[Any] = []

    def get_has_manifest(self, release: SoftwareRelease) -> bool:
        return release.manifest is not None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("digest") and attrs.get("manifest") is None:
            raise serializers.ValidationError(
                {"digest": "Give the release digest, its manifest, or both."}
            )
        return attrs


class SoftwareReleaseDetailSerializer(SoftwareReleaseSerializer):
    """One release, with the manifest uploaded for it."""

    manifest = serializers.JSONField(read_only=True, allow_null=True)
