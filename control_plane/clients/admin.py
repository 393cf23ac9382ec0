"""Admin console pages for clients and API keys.

Issuing and rotating answer with a page that shows each new key once (``no-store``, not
a flash message: messages live in the session or a cookie until read, and a key must
not be written anywhere). The page is the only place the key ever appears.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from control_plane.audit.services import quota_use
from control_plane.clients.choices import ApiKeyStatus
from control_plane.clients.models import ApiKey, Client
from control_plane.clients.querysets import ApiKeyQuerySet, ClientQuerySet, KeyCounts
from control_plane.clients.services import (
    IssuedKey,
    issue_api_key,
    revoke_api_key,
    rotate_api_key,
    save_client,
)
from control_plane.core.errors import Conflict
from control_plane.fleet.placement import sharing_with

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

API_KEY_FIELDS = (
    "prefix",
    "name",
    "status",
    "created_at",
    "last_rotated_at",
    "expires_at",
    "revoked_at",
)


def render_issued_keys(
    request: HttpRequest, issued: list[IssuedKey], *, title: str, opts: Any
) -> HttpResponse:
    """The one page that shows new keys. Not cached, not stored, not repeated."""
    response = TemplateResponse(
        request,
        "admin/clients/api_key_issued.html",
        {
            **admin.site.each_context(request),
            "title": title,
            "issued": issued,
            "opts": opts,
        },
    )
    response["Cache-Control"] = "no-store, max-age=0"
    response["Pragma"] = "no-cache"
    return response


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = API_KEY_FIELDS
    readonly_fields = API_KEY_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are issued with the "Issue an API key" action

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return ApiKeyStatus(obj.status).label


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "name",
        "is_active",
        "pool",
        "usable_keys",
        "allowed_models",
        "max_sessions",
        "created_at",
    )
    list_filter = ("is_active", "pool", "embeddings", "created_at")
    list_select_related = ("pool",)
    search_fields = ("slug", "name", "description")
    readonly_fields = (
        "created_at",
        "updated_at",
        "usage",
        "knowledge_base_names",
        "shares_hardware_with",
    )
    inlines = (ApiKeyInline,)
    actions = ("issue_key",)
    fieldsets = (
        (None, {"fields": ("slug", "name", "description", "is_active")}),
        (
            "Placement",
            {
                "description": "Only the nodes of its pool hold its keys and run its "
                "sessions. A dedicated pool serves this client alone; on a shared pool, "
                "its sessions are batched beside those of the clients listed here.",
                "fields": ("pool", "shares_hardware_with"),
            },
        ),
        (
            "What it may use",
            {
                "fields": (
                    "embeddings",
                    "knowledge_base_names",
                    "max_sessions",
                    "max_tokens_per_request",
                )
            },
        ),
        (
            "Rates and quotas",
            {
                "description": "The client's in all: each enabled node of its pool "
                "enforces an equal share; a change here (or a node added or removed) is "
                "released to the nodes when it is saved.",
                "fields": (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "tokens_per_day",
                    "tokens_per_month",
                    "usage",
                ),
            },
        ),
        (
            "On each node",
            {
                "description": "What it may hold of each node's engine; empty takes the "
                "node's default.",
                "fields": (
                    "max_running_generations",
                    "max_queued_generations",
                    "max_parked_kv_mib",
                ),
            },
        ),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Client]:
        # From Client's manager, so a ClientQuerySet (django-stubs types it as a plain one).
        clients = cast(ClientQuerySet, super().get_queryset(request))
        return clients.with_key_counts().prefetch_related("model_pins")

    def save_model(self, request: HttpRequest, obj: Client, form: Any, change: bool) -> None:
        save_client(obj)  # under its pool's lock: a dedicated pool takes one client

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # Receipts and nodes know the client by its id: it never changes once made.
        return (*self.readonly_fields, "slug") if obj is not None else self.readonly_fields

    @admin.display(description="usable keys", ordering="usable_key_count")
    def usable_keys(self, obj: WithAnnotations[Client, KeyCounts]) -> int:
        return obj.usable_key_count

    @admin.display(description="tokens used (from receipts)")
    def usage(self, obj: Client) -> str:
        if obj.pk is None:
            return "-"
        parts = []
        for use in quota_use(obj):
            quota = "no quota" if use.quota is None else f"of {use.quota:,}"
            parts.append(f"this {use.period}: {use.tokens:,} {quota}")
        return "; ".join(parts)

    @admin.display(description="shares hardware with")
    def shares_hardware_with(self, obj: Client) -> str:
        if obj.pk is None:
            return "-"
        if obj.pool.dedicated:
            return "no one: its pool is dedicated to it"
        return ", ".join(sharing_with(obj)) or "no one yet (its pool is shared)"

    @admin.display(description="knowledge bases")
    def knowledge_base_names(self, obj: Client) -> str:
        if obj.pk is None:
            return "-"
        # Made and loaded under Knowledge bases; the config lists them after each change.
        return ", ".join(obj.knowledge_bases.names()) or "none"

    @admin.display(description="models")
    def allowed_models(self, obj: Client) -> str:
        return ", ".join(f"{p.name}@{p.version}" for p in obj.model_pins.all() if p.enabled)

    def has_issue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("clients.add_apikey")

    @admin.action(description="Issue an API key (shown once)", permissions=["issue"])
    def issue_key(self, request: HttpRequest, queryset: QuerySet[Client]) -> HttpResponse:
        issued = [issue_api_key(client, name="issued in the admin console") for client in queryset]
        return render_issued_keys(request, issued, title="API key issued", opts=ApiKey._meta)


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(ApiKeyStatus.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        # The admin's, from ApiKey's manager: an ApiKeyQuerySet (typed as a plain one).
        keys = cast(ApiKeyQuerySet, queryset)
        now = timezone.now()
        if self.value() == ApiKeyStatus.ACTIVE:
            return keys.usable(now)
        if self.value() == ApiKeyStatus.EXPIRED:
            return keys.expired(now)
        if self.value() == ApiKeyStatus.REVOKED:
            return keys.revoked()
        return keys


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "prefix",
        "client",
        "name",
        "status_label",
        "created_at",
        "last_rotated_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = (ApiKeyStatusFilter, "client", "created_at")
    search_fields = ("prefix", "name", "client__slug", "client__name")
    list_select_related = ("client",)
    # Never "sha256": the console shows what identifies a key, not what authenticates.
    fields = (
        "client",
        "prefix",
        "name",
        "status_label",
        "created_at",
        "last_rotated_at",
        "expires_at",
        "revoked_at",
        "revoked_reason",
    )
    readonly_fields = (
        "client",
        "prefix",
        "status_label",
        "created_at",
        "last_rotated_at",
        "revoked_at",
        "revoked_reason",
    )
    actions = ("revoke", "rotate")

    @admin.display(description="status")
    def status_label(self, obj: ApiKey) -> str:
        return ApiKeyStatus(obj.status).label

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # issued from the client list ("Issue an API key"), never typed in

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the key's history stays

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for api_key in queryset:
            if api_key.revoked_at is None:
                revoke_api_key(api_key, reason="revoked in the admin console")
                count += 1
        self.message_user(
            request,
            f"Revoked {count} key(s). The nodes are sent a config without them now; "
            "their rollout column shows when each has it.",
            messages.SUCCESS,
        )

    @admin.action(
        description="Rotate selected keys (new secret shown once)", permissions=["change"]
    )
    def rotate(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        issued = []
        for api_key in queryset:
            try:
                issued.append(rotate_api_key(api_key))
            except Conflict as exc:
                self.message_user(request, f"{api_key.prefix}: {exc}", messages.WARNING)
        if not issued:
            return None
        return render_issued_keys(request, issued, title="API key rotated", opts=ApiKey._meta)
