"""Users and groups use Django's own admin pages; operator API tokens a read-only list.

knox's own token admin makes tokens with no expiry by default; here tokens are only
listed (user, created, expiry: never the digest's source, which is not stored) and
deleted. They are issued with ``create_operator --token``, which gives them the
configured lifetime.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from knox.models import AuthToken

admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class OperatorTokenAdmin(admin.ModelAdmin):
    list_display = ("token_key", "user", "created", "expiry")
    list_filter = ("user",)
    search_fields = ("token_key", "user__username")
    fields = ("token_key", "user", "created", "expiry")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
