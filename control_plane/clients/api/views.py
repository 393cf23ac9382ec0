"""Thin API views: validate, call a service, serialize."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from control_plane.audit.services import quota_use
from control_plane.clients.api.serializers import (
    ApiKeyIssueSerializer,
    ApiKeyRevokeSerializer,
    ApiKeySerializer,
    ClientSerializer,
    ClientUsageSerializer,
    IssuedApiKeySerializer,
)
from control_plane.clients.filtersets import ApiKeyFilterSet, ClientFilterSet
from control_plane.clients.models import ApiKey, Client
from control_plane.clients.services import IssuedKey, issue_api_key, revoke_api_key, rotate_api_key
from control_plane.fleet.models import Node


class ClientViewSet(viewsets.ModelViewSet):
    queryset = Client.objects.select_related("pool").prefetch_related(
        "model_pins", "knowledge_bases", "pool__clients"
    )
    serializer_class = ClientSerializer
    filterset_class = ClientFilterSet
    search_fields = ("slug", "name")
    ordering_fields = ("slug", "name", "created_at")
    lookup_field = "slug"
    lookup_url_kwarg = "id"

    @extend_schema(responses={200: ClientUsageSerializer})
    @action(detail=True, methods=["get"])
    def usage(self, request: Request, id: str | None = None) -> Response:
        """Tokens used this UTC day and month (from the receipts collected so far)
        against the client's quotas, and its rate limits."""
        client = self.get_object()
        return Response(
            ClientUsageSerializer(
                {
                    "client": client.slug,
                    "requests_per_minute": client.requests_per_minute,
                    "tokens_per_minute": client.tokens_per_minute,
                    "nodes": Node.objects.enabled().filter(pool=client.pool_id).count(),
                    "quotas": quota_use(client),
                }
            ).data
        )


def _issued_response(issued: IssuedKey, code: int) -> Response:
    data = IssuedApiKeySerializer(issued.api_key).data
    data["key"] = issued.secret
    response = Response(data, status=code)
    response["Cache-Control"] = "no-store"
    return response


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Keys: issue (the answer holds the key, once), list, rename, revoke, rotate."""

    queryset = ApiKey.objects.select_related("client")
    serializer_class = ApiKeySerializer
    filterset_class = ApiKeyFilterSet
    search_fields = ("prefix", "name", "client__slug")
    ordering_fields = ("created_at", "expires_at", "revoked_at")
    action_permissions = {
        "revoke": ["clients.change_apikey"],
        "rotate": ["clients.change_apikey"],
    }

    @extend_schema(request=ApiKeyIssueSerializer, responses={201: IssuedApiKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = ApiKeyIssueSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = issue_api_key(
            serializer.validated_data["client"],
            name=serializer.validated_data["name"],
            expires_at=serializer.validated_data["expires_at"],
        )
        return _issued_response(issued, status.HTTP_201_CREATED)

    @extend_schema(request=ApiKeyRevokeSerializer, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        serializer = ApiKeyRevokeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key = revoke_api_key(self.get_object(), reason=serializer.validated_data["reason"])
        return Response(ApiKeySerializer(api_key).data)

    @extend_schema(request=None, responses={200: IssuedApiKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        return _issued_response(rotate_api_key(self.get_object()), status.HTTP_200_OK)
