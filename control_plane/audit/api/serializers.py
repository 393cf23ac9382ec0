"""API representations of receipts, tree heads and the log key (all read-only)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from control_plane.audit.models import Receipt, Statement, TreeHead
from control_plane.audit.services import Period, parse_moment


class ReceiptSerializer(serializers.ModelSerializer):
    leaf_hash = serializers.CharField(source="leaf_hash_b64", read_only=True)
    first_token_ms = serializers.ListField(
        child=serializers.IntegerField(min_value=0),
        allow_null=True,
        read_only=True,
        help_text="Each turn's time to first token in milliseconds (null: not recorded).",
    )

    class Meta:
        model = Receipt
        fields = (
            "record_id",
            "client",
            "node",
            "session_id",
            "model",
            "model_version",
            "model_sha256",
            "started_at",
            "ended_at",
            "ended_by",
            "request_count",
            "prompt_tokens",
            "completion_tokens",
            "first_token_ms",
            "logged_at",
            "log_index",
            "leaf_hash",
            "node_key_id",
            "node_jws",
        )
        read_only_fields = fields


class StatementSerializer(serializers.ModelSerializer):
    leaf_hash = serializers.SerializerMethodField()

    class Meta:
        model = Statement
        fields = (
            "log_index",
            "node",
            "claims_sha256",
            "release_digest",
            "config_version",
            "loaded_models",
            "issued_at",
            "logged_at",
            "leaf_hash",
            "node_key_id",
            "node_jws",
        )
        read_only_fields = fields

    def get_leaf_hash(self, obj: Statement) -> str:
        return base64.b64encode(bytes(obj.leaf_hash)).decode("ascii")


class TreeHeadSerializer(serializers.ModelSerializer):
    root_hash = serializers.CharField(source="root_hash_b64", read_only=True)

    class Meta:
        model = TreeHead
        fields = ("size", "root_hash", "checkpoint", "created_at")
        read_only_fields = fields


@extend_schema_field(OpenApiTypes.STR)
class MomentField(serializers.Field):
    """RFC 3339 (``Z`` or an offset) or a date (UTC midnight), to milliseconds."""

    def to_internal_value(self, data: Any) -> datetime:
        try:
            return parse_moment(str(data))
        except ValueError as exc:
            raise serializers.ValidationError(str(exc), code="invalid") from None

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class BundleQuerySerializer(serializers.Serializer):
    """``?client=ID[&since=T][&until=T]``: one client, sessions ended in ``[since, until)``."""

    client = serializers.CharField(max_length=128)
    since = MomentField(required=False, allow_null=True, default=None)
    until = MomentField(required=False, allow_null=True, default=None)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            attrs["period"] = Period(attrs.get("since"), attrs.get("until"))
        except ValueError as exc:
            raise serializers.ValidationError({"until": [str(exc)]}) from None
        return attrs


class ConsistencyQuerySerializer(serializers.Serializer):
    """``?old=M[&new=N]``: prove the tree of ``M`` leaves is a prefix of the signed ``N``."""

    old = serializers.IntegerField(min_value=0, max_value=(1 << 63) - 1)
    new = serializers.IntegerField(min_value=0, max_value=(1 << 63) - 1, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        new = attrs.get("new")
        if new is not None and attrs["old"] > new:
            raise serializers.ValidationError({"old": ["must not be above new"]})
        return attrs


class CheckpointQuerySerializer(serializers.Serializer):
    size = serializers.IntegerField(min_value=0, required=False)


class LogKeySerializer(serializers.Serializer):
    name = serializers.CharField(help_text="signed-note key name the tree heads are signed as")
    origin = serializers.CharField(help_text="the log's origin (first line of a checkpoint)")
    key_id = serializers.CharField(help_text="RFC 7638 thumbprint of the key")
    verifier_key = serializers.CharField(help_text="name+keyid+base64: for sanctum --log-key")
    pem = serializers.CharField()
    jwk = serializers.DictField(child=serializers.CharField())
