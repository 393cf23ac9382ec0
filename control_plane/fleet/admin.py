"""Admin console pages for nodes and releases: the rollout dashboard.

The rollout columns, the "Roll out now" action and the read-only releases come from
``control_plane.core.admin``; this adds what is a node's.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from control_plane.core.admin import (
    RELEASE_LIST_DISPLAY,
    ReleaseAdmin,
    RolloutTargetAdmin,
    TargetStateInline,
)
from control_plane.core.models import RELEASE_FIELDS
from control_plane.fleet.models import ConfigRelease, Node, NodePool, NodeState
from control_plane.fleet.placement import node_load, pool_capacity, save_pool
from control_plane.fleet.rollout import NODES


class NodeInline(admin.TabularInline):
    model = Node
    fields = ("name", "enabled", "draining", "load")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a node joins a pool from its own page

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return super().get_queryset(request).select_related("state")

    @admin.display(description="slots busy / slots, waiting, open sessions (last health)")
    def load(self, obj: Node) -> str:
        load = node_load(obj)
        return (
            f"{load['slots_busy']}/{load['slots']}, {load['waiting']} waiting, "
            f"{load['sessions_open']} sessions ({load['health'] or 'not checked'})"
        )


@admin.register(NodePool)
class NodePoolAdmin(admin.ModelAdmin):
    """Pools at a glance: who shares hardware, and whether a pool needs another node."""

    list_display = ("name", "kind", "node_count", "client_names", "capacity_summary")
    list_filter = ("kind",)
    search_fields = ("name", "description", "clients__slug", "nodes__name")
    readonly_fields = (
        "client_names",
        "model_names",
        "capacity_summary",
        "created_at",
        "updated_at",
    )
    fields = (
        "name",
        "kind",
        "description",
        "client_names",
        "model_names",
        "capacity_summary",
        "created_at",
        "updated_at",
    )
    inlines = (NodeInline,)

    def save_model(self, request: HttpRequest, obj: NodePool, form: Any, change: bool) -> None:
        save_pool(obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[NodePool]:
        return (
            super().get_queryset(request).prefetch_related("nodes__state", "clients", "model_pins")
        )

    @admin.display(description="nodes")
    def node_count(self, obj: NodePool) -> int:
        return len(obj.nodes.all())

    @admin.display(description="clients (sharing its hardware)")
    def client_names(self, obj: NodePool) -> str:
        return ", ".join(c.slug for c in obj.clients.all()) or "none"

    @admin.display(description="models")
    def model_names(self, obj: NodePool) -> str:
        pins = obj.model_pins.all()
        return ", ".join(f"{p.name}@{p.version}" for p in pins if p.enabled) or "none"

    @admin.display(description="capacity (serving nodes, from their last health)")
    def capacity_summary(self, obj: NodePool) -> str:
        if obj.pk is None:
            return "-"
        c = pool_capacity(obj)
        if not c["serving_nodes"]:
            return "no node serving: its clients get 503"
        use = "" if c["utilisation"] is None else f" ({c['utilisation']:.0%} busy)"
        return (
            f"{c['serving_nodes']} nodes, {c['slots_busy']}/{c['slots']} slots busy{use}, "
            f"{c['waiting']} waiting, {c['sessions_open']} open sessions"
        )


class NodeStateInline(TargetStateInline):
    model = NodeState


@admin.register(Node)
class NodeAdmin(RolloutTargetAdmin):
    rollout_kind = NODES
    list_display = (
        "name",
        "pool",
        "management_url",
        "enabled",
        "draining",
        "rollout",
        "applied_version",
        "latest_version",
        "health_status",
        "health_checked_at",
        "last_error",
    )
    list_filter = ("pool", "enabled", "draining", "state__health_status")
    list_select_related = ("pool",)
    search_fields = ("name", "management_url", "description")
    readonly_fields = ("key_id", "created_at", "updated_at")
    fields = (
        "name",
        "management_url",
        "public_key",
        "key_id",
        "pool",
        "draining",
        "enabled",
        "description",
        "created_at",
        "updated_at",
    )
    inlines = (NodeStateInline,)

    @admin.display(description="key id")
    def key_id(self, obj: Node) -> str:
        return obj.public_key_id if obj.pk else "-"


@admin.register(ConfigRelease)
class ConfigReleaseAdmin(ReleaseAdmin):
    list_display = ("node", *RELEASE_LIST_DISPLAY)
    list_filter = ("status", "node", "created_at")
    search_fields = ("node__name", "document_sha256", "last_error")
    list_select_related = ("node", "released_by")
    fields = ("node", *RELEASE_FIELDS, "model_count", "client_count")
    readonly_fields = fields
