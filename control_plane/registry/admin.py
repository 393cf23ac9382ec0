"""Admin console pages for model pins and software releases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from control_plane.registry.models import ModelPin, SoftwareRelease
from control_plane.registry.services import (
    allow_release,
    disallow_release,
    go_live_now,
    request_pin_verification,
    roll_back_pin,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class ClientTotal(TypedDict):
    """What the admin's queryset adds to each pin."""

    client_total: int


@admin.register(ModelPin)
class ModelPinAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "version",
        "enabled",
        "staged",
        "hash_status",
        "short_sha256",
        "context_size",
        "client_count",
        "hash_checked_at",
    )
    list_filter = ("hash_status", "enabled", "staged", "name")
    search_fields = ("name", "version", "sha256", "path", "source")
    filter_horizontal = ("clients", "pools")
    actions = ("verify_hash", "roll_back", "go_live")
    fieldsets = (
        (None, {"fields": ("name", "version", "enabled", "staged", "supersedes")}),
        (
            "File",
            {
                "description": "A path on the control plane and the nodes (its hash is "
                "computed), or a source on the storage link that nodes fetch, with the "
                "SHA-256 and size from the model's publisher (nodes check the file).",
                "fields": (
                    "path",
                    "source",
                    "sha256",
                    "size",
                    "hash_status",
                    "hash_error",
                    "hash_checked_at",
                ),
            },
        ),
        (
            "Serving",
            {"fields": ("context_size", "gpu_layers", "chat_template", "clients", "pools")},
        ),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )
    _always_read_only = (
        "staged",
        "supersedes",
        "hash_status",
        "hash_error",
        "hash_checked_at",
        "created_at",
        "updated_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelPin]:
        return super().get_queryset(request).annotate(client_total=Count("clients"))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is not None:
            # A pin names one file at one version; a new version is a new pin.
            return (*self._always_read_only, "name", "version", "path", "source", "sha256", "size")
        return self._always_read_only

    @admin.display(description="SHA-256")
    def short_sha256(self, obj: ModelPin) -> str:
        return f"{obj.sha256[:12]}..." if obj.sha256 else "-"

    @admin.display(description="clients", ordering="client_total")
    def client_count(self, obj: WithAnnotations[ModelPin, ClientTotal]) -> int:
        return obj.client_total

    def save_model(self, request: HttpRequest, obj: ModelPin, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            transaction.on_commit(lambda: request_pin_verification(obj))

    @admin.action(
        description="Verify model hash (from the file; a pin by source: nodes verify)",
        permissions=["change"],
    )
    def verify_hash(self, request: HttpRequest, queryset: QuerySet[ModelPin]) -> None:
        pins = list(queryset)
        for pin in pins:
            request_pin_verification(pin)
        self.message_user(
            request,
            f"Hash check queued for {len(pins)} pin(s); the status column shows the result.",
            messages.SUCCESS,
        )

    @admin.action(description="Roll back to the pin it replaced", permissions=["change"])
    def roll_back(self, request: HttpRequest, queryset: QuerySet[ModelPin]) -> None:
        for pin in queryset:
            try:
                previous = roll_back_pin(pin)
            except ValidationError as exc:
                self.message_user(request, f"{pin}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{previous} serves again.", messages.SUCCESS)

    @admin.action(
        description="Go live now, without waiting for the nodes to report it ready",
        permissions=["change"],
    )
    def go_live(self, request: HttpRequest, queryset: QuerySet[ModelPin]) -> None:
        for pin in queryset:
            try:
                live = go_live_now(pin)
            except ValidationError as exc:
                self.message_user(request, f"{pin}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{live} serves now.", messages.SUCCESS)


@admin.register(SoftwareRelease)
class SoftwareReleaseAdmin(admin.ModelAdmin):
    """Mostly read: a release is its digest (and manifest), fixed once recorded; what an
    operator decides is whether it is allowed, with the actions."""

    list_display = ("short_digest", "name", "allowed", "has_manifest", "created_at", "allowed_at")
    list_filter = ("allowed",)
    search_fields = ("digest", "name")
    actions = ("allow", "disallow")
    fields = (
        "digest",
        "name",
        "manifest",
        "allowed",
        "created_at",
        "allowed_at",
        "disallowed_at",
    )
    _always_read_only = ("allowed", "created_at", "allowed_at", "disallowed_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is not None:
            return (*self._always_read_only, "digest", "manifest")
        return self._always_read_only

    @admin.display(description="digest", ordering="digest")
    def short_digest(self, obj: SoftwareRelease) -> str:
        return f"{obj.digest[:16]}..."

    @admin.display(description="manifest", boolean=True)
    def has_manifest(self, obj: SoftwareRelease) -> bool:
        return obj.manifest is not None

    @admin.action(description="Allow: accept nodes that run it", permissions=["change"])
    def allow(self, request: HttpRequest, queryset: QuerySet[SoftwareRelease]) -> None:
        releases = [allow_release(release) for release in queryset]
        self.message_user(request, f"{len(releases)} release(s) allowed.", messages.SUCCESS)

    @admin.action(description="Disallow: stop accepting nodes that run it", permissions=["change"])
    def disallow(self, request: HttpRequest, queryset: QuerySet[SoftwareRelease]) -> None:
        releases = [disallow_release(release) for release in queryset]
        self.message_user(request, f"{len(releases)} release(s) disallowed.", messages.SUCCESS)
