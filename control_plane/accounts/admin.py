"""Users and groups use Django's own admin pages, with an auditor's client scope on the
user's page (and a list of all scopes); operator API tokens and single sign-on
identities are read-only lists.

knox's own token admin makes tokens with no expiry by default; here tokens are only
listed (user, created, expiry: never the digest's source, which is not stored) and
deleted. They are issued with ``create_operator --token``, which gives them the
configured lifetime.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import ForeignKey
from django.forms import ModelChoiceField
from django.http import HttpRequest
from knox.models import AuthToken

from control_plane.accounts.choices import Role
from control_plane.accounts.models import AuditorScope, OperatorIdentity

admin.site.unregister(AuthToken)
User = get_user_model()


class AuditorScopeInline(admin.StackedInline):
    """On an auditor's page: tick the clients it may audit. No scope: every client."""

    model = AuditorScope
    fields = ("clients",)
    filter_horizontal = ("clients",)
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name = "client scope (auditors only: without one, the auditor sees every client)"


admin.site.unregister(User)


@admin.register(User)
class OperatorAdmin(UserAdmin):
    inlines = [AuditorScopeInline]


@admin.register(AuditorScope)
class AuditorScopeAdmin(admin.ModelAdmin):
    list_display = ("user", "client_list")
    search_fields = ("user__username", "clients__slug")
    filter_horizontal = ("clients",)
    fields = ("user", "clients")

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField | None:
        if db_field.name == "user":
            kwargs["queryset"] = User.objects.filter(groups__name=Role.AUDITOR)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("user").prefetch_related("clients")

    @admin.display(description="clients")
    def client_list(self, obj: AuditorScope) -> str:
        return ", ".join(c.slug for c in obj.clients.all()) or "(none)"


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
