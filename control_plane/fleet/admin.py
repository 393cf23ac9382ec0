"""Admin console pages for nodes and releases: the rollout dashboard.

The rollout columns, the "Roll out now" action and the read-only releases come from
``control_plane.core.admin``; this adds what is a node's.
"""

from __future__ import annotations

from django.contrib import admin

from control_plane.core.admin import (
    RELEASE_LIST_DISPLAY,
    ReleaseAdmin,
    RolloutTargetAdmin,
    TargetStateInline,
)
from control_plane.core.models import RELEASE_FIELDS
from control_plane.fleet.models import ConfigRelease, Node, NodeState
from control_plane.fleet.rollout import NODES


class NodeStateInline(TargetStateInline):
    model = NodeState


@admin.register(Node)
class NodeAdmin(RolloutTargetAdmin):
    rollout_kind = NODES
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
