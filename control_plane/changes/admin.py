"""The change trail in the admin console: read-only for everyone."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from control_plane.changes.models import ObjectChange


@admin.register(ObjectChange)
class ObjectChangeAdmin(admin.ModelAdmin):
    list_display = ("time", "user_name", "source", "action", "changed_object_type", "object_repr")
    list_filter = ("action", "source", "changed_object_type", "time")
    search_fields = ("object_repr", "user_name", "changed_object_id")
    date_hierarchy = "time"
    fields = (
        "time",
        "user_name",
        "source",
        "action",
        "changed_object_type",
        "changed_object_id",
        "object_repr",
        "changes",
    )
    readonly_fields = fields

    @admin.display(description="before → after")
    def changes(self, obj: ObjectChange) -> str:
        rows = obj.diff() or {}
        if not rows:
            return "-"
        return format_html(
            "<pre>{}</pre>",
            "\n".join(
                f"{name}: {json.dumps(before)} → {json.dumps(after)}"
                for name, (before, after) in rows.items()
            ),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
