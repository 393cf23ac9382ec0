"""Admin console pages for nodes and releases: the rollout dashboard."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from control_plane.fleet.choices import ReleaseStatus, RolloutState
from control_plane.fleet.models import ConfigRelease, Node, NodeState
from control_plane.fleet.services import roll_out


def _state(node: Node) -> NodeState | None:
    try:
        return node.state
    except NodeState.DoesNotExist:
        return None


class NodeStateInline(admin.StackedInline):
    model = NodeState
    can_delete = False
    fields = (
        "applied_version",
        "last_push_at",
        "last_push_error",
        "health_status",
        "health_checked_at",
        "health_error",
        "health",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "management_url",
        "enabled",
        "rollout",
        "applied_version",
        "latest_version",
        "health_status",
        "health_checked_at",
        "last_error",
    )
    list_filter = ("enabled", "state__health_status")
    search_fields = ("name", "management_url", "description")
    readonly_fields = ("key_id", "created_at", "updated_at")
    fields = (
        "name",
        "management_url",
        "public_key",
        "key_id",
        "enabled",
        "description",
        "created_at",
        "updated_at",
    )
    inlines = (NodeStateInline,)
    actions = ("roll_out_now",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return super().get_queryset(request).with_rollout()

    @admin.display(description="key id")
    def key_id(self, obj: Node) -> str:
        return obj.public_key_id if obj.pk else "-"

    @admin.display(description="rollout")
    def rollout(self, obj: Node) -> str:
        state = _state(obj)
        applied = state.applied_version if state else None
        if obj.latest_version is None:
            return RolloutState.NO_RELEASE.label
        if applied is not None and applied >= obj.latest_version:
            return RolloutState.IN_SYNC.label
        return ReleaseStatus(obj.latest_status).label

    @admin.display(description="holds version")
    def applied_version(self, obj: Node) -> Any:
        state = _state(obj)
        return state.applied_version if state else None

    @admin.display(description="latest release", ordering="latest_version")
    def latest_version(self, obj: Node) -> Any:
        return obj.latest_version

    @admin.display(description="health")
    def health_status(self, obj: Node) -> str:
        state = _state(obj)
        return state.get_health_status_display() if state else "-"

    @admin.display(description="health checked")
    def health_checked_at(self, obj: Node) -> Any:
        state = _state(obj)
        return state.health_checked_at if state else None

    @admin.display(description="last error")
    def last_error(self, obj: Node) -> str:
        return obj.latest_error or ""

    def has_rollout_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("fleet.add_configrelease")

    @admin.action(description="Roll out now", permissions=["rollout"])
    def roll_out_now(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        nodes = [node for node in queryset if node.enabled]
        releases = roll_out(nodes)
        summary = ", ".join(f"{r.node.name} v{r.version}" for r in releases) or "no enabled node"
        self.message_user(
            request,
            f"Released {summary}. The rollout column shows each node's progress.",
            messages.SUCCESS,
        )


@admin.register(ConfigRelease)
class ConfigReleaseAdmin(admin.ModelAdmin):
    list_display = (
        "node",
        "version",
        "status",
        "attempts",
        "last_error",
        "released_by",
        "created_at",
        "applied_at",
    )
    list_filter = ("status", "node", "created_at")
    search_fields = ("node__name", "bundle_sha256", "last_error")
    list_select_related = ("node", "released_by")
    date_hierarchy = "created_at"
    fields = (
        "node",
        "version",
        "status",
        "attempts",
        "last_error",
        "last_attempt_at",
        "applied_at",
        "released_by",
        "created_at",
        "bundle_sha256",
        "model_count",
        "client_count",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # releases come from "Roll out now"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
