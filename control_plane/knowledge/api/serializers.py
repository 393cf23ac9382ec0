"""API representations of knowledge bases and their catalog: metadata, never text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework import serializers

from control_plane.clients.models import Client
from control_plane.clients.validators import bundle_name_validator
from control_plane.knowledge.choices import CopyStatus
from control_plane.knowledge.models import DocumentCopy, KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.services import Report

if TYPE_CHECKING:
    from control_plane.fleet.models import Node


class DocumentCopySerializer(serializers.ModelSerializer):
    node: serializers.SlugRelatedField[Node] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )
    status = serializers.ChoiceField(choices=CopyStatus.choices, read_only=True)

    class Meta:
        model = DocumentCopy
        fields = ("node", "status", "reason", "sha256", "chunks", "updated_at")
        read_only_fields = fields


class KnowledgeDocumentSerializer(serializers.ModelSerializer):
    copies = DocumentCopySerializer(many=True, read_only=True, help_text="Each node's copy.")

    class Meta:
        model = KnowledgeDocument
        fields = (
            "id",
            "knowledge_base",
            "name",
            "bytes",
            "sha256",
            "chunks",
            "loaded_at",
            "copies",
        )
        read_only_fields = fields


class KnowledgeBaseSerializer(serializers.ModelSerializer):
    client = serializers.SlugRelatedField(slug_field="slug", queryset=Client.objects.all())
    name = serializers.CharField(max_length=128, validators=[bundle_name_validator])
    document_count = serializers.IntegerField(read_only=True, default=0)
    chunk_count = serializers.IntegerField(read_only=True, default=0)
    byte_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = KnowledgeBase
        # A tuple of any length: KnowledgeBaseDetailSerializer adds to it.
        fields: tuple[str, ...] = (
            "id",
            "client",
            "name",
            "description",
            "document_count",
            "chunk_count",
            "byte_count",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("id", "created_at", "updated_at")
        # Uniqueness is the service's to check (409), not a serializer's 400.
        validators: list[Any] = []

    def to_representation(self, instance: KnowledgeBase) -> dict[str, Any]:
        data = super().to_representation(instance)
        for name in ("document_count", "chunk_count", "byte_count"):
            data[name] = data.get(name) or 0
        return data


class KnowledgeBaseDetailSerializer(KnowledgeBaseSerializer):
    documents = KnowledgeDocumentSerializer(many=True, read_only=True, help_text="The catalog.")

    class Meta(KnowledgeBaseSerializer.Meta):
        fields = (*KnowledgeBaseSerializer.Meta.fields, "documents")


class DocumentUploadSerializer(serializers.Serializer):
    """``multipart/form-data``: one ``file`` part per document; optionally a ``name`` part
    per file, in the same order, to name it (e.g. by its relative path ``sub/a.md``;
    a file's own name loses its folders on the way)."""

    file = serializers.ListField(child=serializers.FileField(), min_length=1)
    name = serializers.ListField(child=serializers.CharField(), required=False)


class NodeReportSerializer(serializers.Serializer):
    node = serializers.CharField()
    status = serializers.ChoiceField(choices=["ok", "unreachable", "error"])
    error = serializers.CharField(required=False)


class FileResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=["ingested", "unchanged", "skipped"])
    chunks = serializers.IntegerField()
    reason = serializers.CharField(required=False, help_text="Why it was skipped.")
    nodes = serializers.DictField(child=serializers.CharField(), help_text="Each node's answer.")


class ReportSerializer(serializers.Serializer):
    knowledge_base = serializers.DictField()
    complete = serializers.BooleanField(help_text="Every node serving the client answered.")
    nodes = NodeReportSerializer(many=True)
    results = FileResultSerializer(many=True, required=False)


def report_data(report: Report) -> dict[str, Any]:
    kb = report.knowledge_base
    return {
        "knowledge_base": {"id": kb.pk, "client": kb.client.slug, "name": kb.name},
        "complete": report.complete,
        "nodes": [n.as_dict() for n in report.nodes],
        "results": [r.as_dict() for r in report.results],
    }


class IngestLimitsSerializer(serializers.Serializer):
    max_request_bytes = serializers.IntegerField(help_text="One upload to the control plane.")
    max_files = serializers.IntegerField(help_text="Files in one upload.")
    file_types = serializers.ListField(
        child=serializers.CharField(), allow_null=True, help_text="What every node takes."
    )
    max_document_bytes = serializers.IntegerField(allow_null=True, help_text="One file.")
