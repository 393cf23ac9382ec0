"""Thin API views: validate, call a service, serialize."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers, viewsets

from control_plane.accounts.api.serializers import AuditorScopeSerializer
from control_plane.accounts.models import AuditorScope
from control_plane.accounts.services import scope_auditor


class AuditorScopeViewSet(viewsets.ModelViewSet):
    """Auditors scoped to clients (admins only). ``POST`` scopes an auditor, ``PUT`` or
    ``PATCH`` changes its clients, ``DELETE`` lifts the scope: it then sees every client."""

    queryset = AuditorScope.objects.select_related("user").prefetch_related("clients")
    serializer_class = AuditorScopeSerializer
    lookup_field = "user__username"
    lookup_url_kwarg = "auditor"
    lookup_value_regex = r"[^/]+"
    search_fields = ("user__username", "clients__slug")
    ordering_fields = ("user__username",)
    ordering = ("user__username",)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        self._scope(serializer)

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        self._scope(serializer)

    def perform_destroy(self, instance: AuditorScope) -> None:
        scope_auditor(instance.user, None)

    def _scope(self, serializer: serializers.BaseSerializer) -> None:
        data: dict[str, Any] = serializer.validated_data
        current: AuditorScope | None = serializer.instance
        # Created: both fields are required. Updated: the auditor stays (the serializer
        # refuses another), a PATCH without clients keeps them.
        user = current.user if current is not None else data["user"]
        clients = data.get("clients", list(current.clients.all()) if current else [])
        try:
            serializer.instance = scope_auditor(user, clients)
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"auditor": exc.messages}) from None
