"""API representation of an auditor's client scope."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import serializers

from control_plane.accounts.choices import Role
from control_plane.accounts.models import AuditorScope
from control_plane.clients.models import Client


class AuditorScopeSerializer(serializers.ModelSerializer):
    auditor = serializers.SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=get_user_model().objects.filter(groups__name=Role.AUDITOR),
        help_text="An operator in the auditor role (create_operator NAME --role auditor).",
    )
    clients = serializers.SlugRelatedField(
        many=True,
        slug_field="slug",
        queryset=Client.objects.all(),
        help_text="The only client ids the auditor sees; [] for none at all.",
    )

    class Meta:
        model = AuditorScope
        fields = ("auditor", "clients")

    def validate_auditor(self, value: object) -> object:
        if self.instance is not None and value != self.instance.user:
            raise serializers.ValidationError("a scope stays with its auditor")
        return value
