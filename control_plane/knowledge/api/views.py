"""Thin API views: validate, call a service, serialize.

Uploads are ``multipart/form-data`` read into memory only (``uploads``): the request's
size is checked against the cap before its body is read (413 beyond it).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from control_plane.clients.models import Client
from control_plane.knowledge.api.serializers import (
    DocumentUploadSerializer,
    IngestLimitsSerializer,
    KnowledgeBaseDetailSerializer,
    KnowledgeBaseSerializer,
    KnowledgeDocumentSerializer,
    ReportSerializer,
    report_data,
)
from control_plane.knowledge.filtersets import KnowledgeBaseFilterSet, KnowledgeDocumentFilterSet
from control_plane.knowledge.models import DocumentCopy, KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.services import (
    Report,
    UploadedDocument,
    create_knowledge_base,
    delete_document,
    delete_knowledge_base,
    ingest_limits,
    load_documents,
)
from control_plane.knowledge.uploads import check_content_length


def _report_response(report: Report) -> Response:
    # Some node did not answer: the answer says which. None did: the load or the delete
    # did not happen anywhere, and that is a gateway failure, not a success.
    code = status.HTTP_502_BAD_GATEWAY if report.reached_none else status.HTTP_200_OK
    return Response(report_data(report), status=code)


def _copies() -> Prefetch:
    return Prefetch("copies", queryset=DocumentCopy.objects.select_related("node"))


class KnowledgeBaseViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Knowledge bases: create, list, read (with the catalog), load documents, delete."""

    queryset = KnowledgeBase.objects.select_related("client").with_totals()
    serializer_class = KnowledgeBaseSerializer
    filterset_class = KnowledgeBaseFilterSet
    search_fields = ("name", "client__slug")
    ordering_fields = ("name", "created_at", "updated_at")
    action_permissions = {
        "documents": ["knowledge.add_knowledgedocument", "knowledge.change_knowledgedocument"],
        "limits": ["knowledge.view_knowledgebase"],
    }

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(
                Prefetch(
                    "documents", queryset=KnowledgeDocument.objects.prefetch_related(_copies())
                )
            )
        return queryset

    def get_serializer_class(self) -> Any:
        if self.action == "retrieve":
            return KnowledgeBaseDetailSerializer
        return super().get_serializer_class()

    def perform_create(self, serializer: BaseSerializer[KnowledgeBase]) -> None:
        data = serializer.validated_data
        serializer.instance = create_knowledge_base(
            data["client"], data["name"], data.get("description", "")
        )

    @extend_schema(responses={200: ReportSerializer, 502: ReportSerializer})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete from every node serving the client, then here; the client's config stops
        listing it. 502 when no node could be reached (nothing is deleted here)."""
        return _report_response(delete_knowledge_base(self.get_object()))

    @extend_schema(
        request={"multipart/form-data": DocumentUploadSerializer},
        responses={200: ReportSerializer, 502: ReportSerializer},
    )
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser])
    def documents(self, request: Request, pk: str | None = None) -> Response:
        """Load files onto every node serving the client. Each file gets its outcome
        (ingested, unchanged, or skipped with the node's reason); each node its own."""
        check_content_length(request.META)
        kb = self.get_object()
        uploads = request.FILES.getlist("file")
        names = request.data.getlist("name") if hasattr(request.data, "getlist") else []
        if not uploads:
            raise ValidationError({"file": "Send one or more files as 'file' parts."})
        if names and len(names) != len(uploads):
            raise ValidationError({"name": "Send one 'name' per 'file', or none."})
        files = [
            UploadedDocument(name=names[i] if names else (f.name or ""), data=f.read())
            for i, f in enumerate(uploads)
        ]
        return _report_response(load_documents(kb, files))

    @extend_schema(
        parameters=[OpenApiParameter("client", str, required=True)],
        responses={200: IngestLimitsSerializer},
    )
    @action(detail=False, methods=["get"])
    def limits(self, request: Request) -> Response:
        """What one upload may carry: the control plane's cap, and what the nodes serving
        the client take (asked now; ``null`` where none answered)."""
        slug = request.query_params.get("client", "")
        client = Client.objects.filter(slug=slug).first()
        if client is None:
            raise ValidationError({"client": "No client with this id."})
        return Response(IngestLimitsSerializer(ingest_limits(client)).data)


class KnowledgeDocumentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The catalog: one row per document (never its text). ``DELETE`` removes a document
    from every node serving the client, then from the catalog."""

    queryset = KnowledgeDocument.objects.select_related("knowledge_base__client").prefetch_related(
        _copies()
    )
    serializer_class = KnowledgeDocumentSerializer
    filterset_class = KnowledgeDocumentFilterSet
    search_fields = ("name",)
    ordering_fields = ("name", "loaded_at", "bytes")

    @extend_schema(responses={200: ReportSerializer, 502: ReportSerializer})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return _report_response(delete_document(self.get_object()))
