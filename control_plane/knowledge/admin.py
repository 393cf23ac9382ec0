"""Admin console pages for knowledge bases: the catalog, loading files, deleting.

Loading is a page of its own on a knowledge base ("Load documents"): a multi-file upload
read into memory only (``uploads``), handed to ``services.load_documents``, answered with
each file's outcome and each node's. Deleting a knowledge base or a document goes through
the services too, so it is deleted from the nodes, not only from the catalog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from control_plane.core.errors import Conflict
from control_plane.fleet.models import NodeState
from control_plane.knowledge.models import KnowledgeBase, KnowledgeDocument
from control_plane.knowledge.querysets import KnowledgeBaseQuerySet, Totals
from control_plane.knowledge.services import (
    Report,
    UploadedDocument,
    create_knowledge_base,
    delete_document,
    delete_knowledge_base,
    load_documents,
    serving_nodes,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations
from control_plane.knowledge.uploads import UploadTooLarge, check_content_length, max_upload_bytes


def _report_message(
    admin_: admin.ModelAdmin, request: HttpRequest, report: Report, what: str
) -> None:
    failed = [n for n in report.nodes if n.status != "ok"]
    if not failed:
        admin_.message_user(
            request, f"{what} on every node ({len(report.nodes)}).", messages.SUCCESS
        )
        return
    listed = "; ".join(f"{n.node}: {n.error}" for n in failed)
    admin_.message_user(
        request,
        f"{what} not done on {len(failed)} of {len(report.nodes)} node(s) ({listed}); "
        "it stays in the catalog: try again when they are back.",
        messages.ERROR,
    )


class KnowledgeDocumentInline(admin.TabularInline):
    model = KnowledgeDocument
    fields = ("name", "bytes", "chunks", "loaded_at", "on_nodes")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # documents are loaded with "Load documents"

    @admin.display(description="on the nodes")
    def on_nodes(self, obj: KnowledgeDocument) -> str:
        return _copies(obj)


def _copies(document: KnowledgeDocument) -> str:
    copies = list(document.copies.select_related("node"))
    if not copies:
        return "-"
    return ", ".join(
        f"{c.node.name}: {c.get_status_display().lower()}" + (f" ({c.reason})" if c.reason else "")
        for c in copies
    )


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    list_display = ("name", "client", "documents", "chunks", "updated_at")
    list_filter = ("client", "created_at")
    search_fields = ("name", "client__slug", "description")
    list_select_related = ("client",)
    fields = ("client", "name", "description", "load", "on_the_nodes", "created_at", "updated_at")
    readonly_fields = ("load", "on_the_nodes", "created_at", "updated_at")
    inlines = (KnowledgeDocumentInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[KnowledgeBase]:
        # From KnowledgeBase's manager: a KnowledgeBaseQuerySet (typed as a plain one).
        return cast(KnowledgeBaseQuerySet, super().get_queryset(request)).with_totals()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # The nodes name the collection by client and name: neither changes once made.
        if obj is None:
            return ()
        return (*self.readonly_fields, "client", "name")

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> tuple[Any, ...]:
        return self.inlines if obj is not None else ()  # a new one has no documents yet

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return self.fields if obj is not None else ("client", "name", "description")

    @admin.display(description="documents", ordering="document_count")
    def documents(self, obj: WithAnnotations[KnowledgeBase, Totals]) -> int:
        return obj.document_count

    @admin.display(description="chunks", ordering="chunk_count")
    def chunks(self, obj: WithAnnotations[KnowledgeBase, Totals]) -> int:
        return obj.chunk_count or 0

    @admin.display(description="load")
    def load(self, obj: KnowledgeBase) -> str:
        url = reverse("admin:knowledge_knowledgebase_load", args=[obj.pk])
        return format_html('<a class="button" href="{}">Load documents</a>', url)

    @admin.display(description="on the nodes (from their last health report)")
    def on_the_nodes(self, obj: KnowledgeBase) -> str:
        """What each serving node reports holding: a node added after the documents were
        loaded holds none of them until they are loaded again."""
        nodes = serving_nodes(obj.client)
        if not nodes:
            return "no enabled node"
        expected = obj.documents.count()
        states = {s.node_id: s for s in NodeState.objects.filter(node__in=nodes)}
        rows = []
        for node in nodes:
            health = getattr(states.get(node.pk), "health", None)
            if not isinstance(health, dict):
                rows.append((node.name, "health not known yet"))
                continue
            held = next(
                (
                    kb
                    for kb in health.get("knowledge_bases") or []
                    if kb.get("client") == obj.client.slug and kb.get("name") == obj.name
                ),
                None,
            )
            count = int(held.get("documents", 0)) if held else 0
            note = f"{count} of {expected} documents"
            if count < expected:
                note += ": load the missing ones again (the control plane keeps no copy)"
            rows.append((node.name, note))
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}: {}</li>", rows))

    def save_model(self, request: HttpRequest, obj: KnowledgeBase, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            made = create_knowledge_base(obj.client, obj.name, obj.description)
        except Conflict as exc:
            raise ValidationError(str(exc)) from None
        obj.pk, obj._state.adding = made.pk, False

    def delete_model(self, request: HttpRequest, obj: KnowledgeBase) -> None:
        _report_message(self, request, delete_knowledge_base(obj), f"Deleted {obj}")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[KnowledgeBase]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)

    def get_urls(self) -> list[Any]:
        load = self.admin_site.admin_view(csrf_exempt(self.load_view))
        return [
            path("<path:object_id>/load/", load, name="knowledge_knowledgebase_load"),
            *super().get_urls(),
        ]

    def load_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The upload page. Its size is checked before the form is read (the CSRF check
        reads it), so it is exempted from the middleware and checked inside instead."""
        kb = get_object_or_404(KnowledgeBase.objects.select_related("client"), pk=object_id)
        if not (
            request.user.has_perm("knowledge.add_knowledgedocument")
            and request.user.has_perm("knowledge.change_knowledgedocument")
        ):
            raise PermissionDenied
        if request.method == "POST":
            try:
                check_content_length(request.META)
            except UploadTooLarge as exc:
                return self._load_page(request, kb, error=str(exc.detail), status=413)
        return csrf_protect(self._load)(request, kb)

    def _load(self, request: HttpRequest, kb: KnowledgeBase) -> HttpResponse:
        if request.method != "POST":
            return self._load_page(request, kb)
        files = [
            UploadedDocument(name=f.name or "", data=f.read())
            for f in request.FILES.getlist("files")
        ]
        if not files:
            return self._load_page(request, kb, error="Choose one or more files.", status=400)
        try:
            report = load_documents(kb, files)
        except ValidationError as exc:
            return self._load_page(request, kb, error=" ".join(exc.messages), status=400)
        except Conflict as exc:
            return self._load_page(request, kb, error=str(exc), status=409)
        return self._load_page(request, kb, report=report)

    def _load_page(
        self,
        request: HttpRequest,
        kb: KnowledgeBase,
        *,
        report: Report | None = None,
        error: str = "",
        status: int = 200,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": f"Load documents into {kb}",
            "opts": self.model._meta,
            "original": kb,
            "report": report,
            "error": error,
            "max_upload_bytes": max_upload_bytes(),
        }
        return TemplateResponse(
            request, "admin/knowledge/knowledgebase/load.html", context, status=status
        )


@admin.register(KnowledgeDocument)
class KnowledgeDocumentAdmin(admin.ModelAdmin):
    list_display = ("name", "knowledge_base", "bytes", "chunks", "loaded_at")
    list_filter = ("knowledge_base__client", "loaded_at")
    search_fields = ("name", "knowledge_base__name", "knowledge_base__client__slug")
    list_select_related = ("knowledge_base__client",)
    fields = ("knowledge_base", "name", "bytes", "sha256", "chunks", "loaded_at", "on_nodes")
    readonly_fields = fields

    @admin.display(description="on the nodes")
    def on_nodes(self, obj: KnowledgeDocument) -> str:
        return _copies(obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: KnowledgeDocument) -> None:
        _report_message(self, request, delete_document(obj), f"Deleted {obj.name}")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[KnowledgeDocument]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)
