"""Receipts, tree heads, node keys and collection in the admin console: read-only for all.

The ledger is written by collection only and never changed: no add, change or delete
here for anyone (superusers included), on top of the models' and the database's refusal.
A scoped auditor's receipt list (and its client filter) holds only its clients'
(``control_plane.audit.scopes``); the other pages here are not its to see
(``control_plane.audit.backends``) except tree heads and node keys.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from control_plane.audit.charts import DayRange, usage_charts
from control_plane.audit.models import CollectionState, NodeKey, Receipt, RefusedRecord, TreeHead
from control_plane.audit.scopes import audit_scope
from control_plane.audit.services import ledger_status


class ReadOnlyAdmin(admin.ModelAdmin):
    """Lists and detail pages only."""

    actions = None

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields or [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = (
        "log_index",
        "client",
        "node",
        "session_id",
        "model",
        "ended_at",
        "ended_by",
        "request_count",
        "prompt_tokens",
        "completion_tokens",
        "logged_at",
    )
    list_filter = ("client", "node", "ended_by", "model", "ended_at")
    search_fields = ("=record_id", "=session_id", "client")
    date_hierarchy = "ended_at"
    fields = (
        "log_index",
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
        "leaf_hash_b64",
        "node_key_id",
        "node_jws",
        "bundle",
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields

    def get_queryset(self, request: HttpRequest) -> Any:
        # The list, its client and node filters, the date drill-down and the detail page
        # all read this queryset.
        return audit_scope(request.user).receipts(super().get_queryset(request))

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        # The charts show the last 14 days of every receipt the operator may see, not
        # the list's filters.
        charts = usage_charts(self.get_queryset(request), DayRange.ending())
        extra_context = {
            **(extra_context or {}),
            "usage_charts": [chart.svg() for chart in charts.values()],
            "user_scoped": audit_scope(request.user).scoped,
        }
        return super().changelist_view(request, extra_context)

    @admin.display(description="leaf hash")
    def leaf_hash_b64(self, obj: Receipt) -> str:
        return obj.leaf_hash_b64

    @admin.display(description="audit bundle")
    def bundle(self, obj: Receipt) -> str:
        url = reverse("audit:receipts")
        return format_html('<a href="{}?client={}">receipts of {}</a>', url, obj.client, obj.client)


@admin.register(TreeHead)
class TreeHeadAdmin(ReadOnlyAdmin):
    list_display = ("size", "root_hash_b64", "created_at")
    date_hierarchy = "created_at"
    fields = ("size", "root_hash_b64", "created_at", "note")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields

    @admin.display(description="root hash")
    def root_hash_b64(self, obj: TreeHead) -> str:
        return obj.root_hash_b64

    @admin.display(description="signed checkpoint")
    def note(self, obj: TreeHead) -> str:
        return format_html("<pre>{}</pre>", obj.checkpoint)


@admin.register(NodeKey)
class NodeKeyAdmin(ReadOnlyAdmin):
    list_display = ("node", "key_id", "first_used_at")
    list_filter = ("node",)


@admin.register(CollectionState)
class CollectionStateAdmin(ReadOnlyAdmin):
    list_display = (
        "node",
        "cursor",
        "last_success_at",
        "last_run_at",
        "collected_total",
        "refused_pending",
        "node_tree_size",
        "last_error",
    )

    @admin.display(description="tree size the node holds")
    def node_tree_size(self, obj: CollectionState) -> str:
        lines = obj.tree_head.split("\n")
        return lines[1] if len(lines) > 2 else "-"

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # A restored database: say so above the list, not only in each node's last error.
        problem = ledger_status().problem
        if problem:
            messages.error(request, problem)
        return super().changelist_view(request, extra_context)


@admin.register(RefusedRecord)
class RefusedRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "node",
        "cursor",
        "record_id",
        "reason",
        "times_seen",
        "first_seen_at",
        "last_seen_at",
        "resolved_at",
    )
    list_filter = ("node", "resolved_at")
