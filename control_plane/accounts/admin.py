"""Users and groups use Django's own admin pages; operator API tokens and single sign-on
identities are read-only lists.

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

from control_plane.accounts.models import OperatorIdentity

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


@admin.register(OperatorIdentity)
class OperatorIdentityAdmin(admin.ModelAdmin):
    """Which users sign in through the identity provider; made only by signing in.

    Deleting one unlinks the user from the provider's subject (the user stays, with no
    usable password, until deleted too)."""

    list_display = ("user", "subject", "issuer", "last_sign_in_at")
    search_fields = ("user__username", "subject")
    fields = ("user", "issuer", "subject", "created_at", "last_sign_in_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
