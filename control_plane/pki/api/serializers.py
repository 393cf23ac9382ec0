"""Serializers of the certificates app: tokens (never their secret), certificates,
and the enrolment exchange."""

from __future__ import annotations

from rest_framework import serializers

from control_plane.pki.choices import TargetKind
from control_plane.pki.models import EnrolmentToken, IssuedCertificate

TOKEN_FIELDS: tuple[str, ...] = (
    "id",
    "kind",
    "target_name",
    "token_id",
    "ca_fingerprint",
    "expires_at",
    "used_at",
    "created_by",
    "created_at",
)


class EnrolmentTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = EnrolmentToken
        fields = TOKEN_FIELDS
        read_only_fields = TOKEN_FIELDS


class EnrolmentTokenCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=TargetKind.choices)
    target_name = serializers.CharField(max_length=128)
    lifetime_seconds = serializers.IntegerField(required=False, min_value=60)


class IssuedEnrolmentTokenSerializer(EnrolmentTokenSerializer):
    """The answer to making a token: the only time its text is shown."""

    token = serializers.CharField(read_only=True)

    class Meta:
        model = EnrolmentToken
        fields = (*TOKEN_FIELDS, "token")
        read_only_fields = fields


class IssuedCertificateSerializer(serializers.ModelSerializer):
    class Meta:
        model = IssuedCertificate
        fields = (
            "id",
            "kind",
            "target_name",
            "purpose",
            "serial",
            "not_before",
            "not_after",
            "public_key",
            "certificate",
            "created_at",
        )
        read_only_fields = fields


class EnrolRequestSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200)
    csr = serializers.CharField(max_length=16_384, help_text="PEM CSR of the management key")
    ingress_csr = serializers.CharField(
        max_length=16_384, required=False, help_text="a gateway's: PEM CSR of its nginx key"
    )


class EnrolmentSerializer(serializers.Serializer):
    kind = serializers.CharField()
    name = serializers.CharField()
    certificate = serializers.CharField()
    ca = serializers.CharField()
    ingress_certificate = serializers.CharField(allow_null=True)
    ingress_ca = serializers.CharField(allow_null=True)


class CertificateAuthoritiesSerializer(serializers.Serializer):
    management_ca = serializers.CharField()
    management_ca_fingerprint = serializers.CharField()
    ingress_ca = serializers.CharField()
    ingress_ca_fingerprint = serializers.CharField()
