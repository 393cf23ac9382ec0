"""Admin console pieces of the rollout mechanism, for every kind of target.

A kind's app registers its target admin on :class:`RolloutTargetAdmin` (the rollout
columns and the "Roll out now" action), its state inline on :class:`TargetStateInline`
and its release admin on :class:`ReleaseAdmin`, adding only what differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from control_plane.core.choices import ReleaseStatus, RolloutState
from control_plane.core.models import RolloutTarget, rollout_state
from control_plane.core.querysets import LatestRelease, RolloutTargetQuerySet
from control_plane.core.rollout import RolloutKind, roll_out

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

TARGET_STATE_FIELDS = (
    "applied_version",
    "last_push_at",
    "last_push_error",
    "health_status",
    "health_checked_at",
    "health_error",
    "health",
)
# A release's columns and fields after its target's.
RELEASE_LIST_DISPLAY = (
    "version",
    "status",
    "attempts",
    "last_error",
    "released_by",
    "created_at",
    "applied_at",
)


class TargetStateInline(admin.StackedInline):
    """What we last learnt about the target, read-only (set ``model``)."""

    can_delete = False
    fields = TARGET_STATE_FIELDS
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RolloutTargetAdmin(admin.ModelAdmin):
    """A target's list with its rollout columns, and the "Roll out now" action."""

    rollout_kind: ClassVar[RolloutKind[Any, Any, Any]]
    actions = ("roll_out_now",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The admin's queryset comes from the model's manager, so it is the kind's
        # RolloutTargetQuerySet; django-stubs types ModelAdmin's as a plain QuerySet.
        queryset = cast(RolloutTargetQuerySet[Any], super().get_queryset(request))
        return queryset.with_rollout()

    @admin.display(description="rollout")
    def rollout(self, obj: WithAnnotations[RolloutTarget, LatestRelease]) -> str:
        state = obj.current_state()
        where = rollout_state(
            obj.latest_version,
            obj.latest_status,
            state.applied_version if state else None,
        )
        if where in (RolloutState.NO_RELEASE, RolloutState.IN_SYNC) or obj.latest_status is None:
            return RolloutState(where).label
        return ReleaseStatus(obj.latest_status).label

    @admin.display(description="holds version")
    def applied_version(self, obj: RolloutTarget) -> Any:
        state = obj.current_state()
        return state.applied_version if state else None

    @admin.display(description="latest release", ordering="latest_version")
    def latest_version(self, obj: WithAnnotations[RolloutTarget, LatestRelease]) -> int | None:
        return obj.latest_version

    @admin.display(description="health")
    def health_status(self, obj: RolloutTarget) -> str:
        state = obj.current_state()
        return state.get_health_status_display() if state else "-"

    @admin.display(description="health checked")
    def health_checked_at(self, obj: RolloutTarget) -> Any:
        state = obj.current_state()
        return state.health_checked_at if state else None

    @admin.display(description="last error")
    def last_error(self, obj: WithAnnotations[RolloutTarget, LatestRelease]) -> str:
        return obj.latest_error or ""

    def has_rollout_permission(self, request: HttpRequest) -> bool:
        opts = self.rollout_kind.release_model._meta
        return request.user.has_perm(f"{opts.app_label}.add_{opts.model_name}")

    @admin.action(description="Roll out now", permissions=["rollout"])
    def roll_out_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        kind = self.rollout_kind
        releases = roll_out(kind, [target for target in queryset if target.enabled])
        summary = ", ".join(f"{r.target.name} v{r.version}" for r in releases)
        self.message_user(
            request,
            f"Released {summary or f'no enabled {kind.name}'}. "
            f"The rollout column shows each {kind.name}'s progress.",
            messages.SUCCESS,
        )


class ReleaseAdmin(admin.ModelAdmin):
    """Releases, read-only: they come from "Roll out now", and the trail keeps them."""

    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # releases come from "Roll out now"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
