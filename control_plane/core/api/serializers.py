"""API representations shared by every kind of rollout target.

A release's signed document is never exposed: nodes and gateways get it by push, not by
download. Each kind's app subclasses these with its model and what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rest_framework import serializers

from control_plane.core.models import RolloutTarget

if TYPE_CHECKING:
    from django.contrib.auth.models import User

TARGET_STATE_FIELDS = (
    "applied_version",
    "last_push_at",
    "last_push_error",
    "health_status",
    "health",
    "health_checked_at",
    "health_error",
)


class TargetStateSerializer(serializers.ModelSerializer):
    """What we last learnt about a target (subclasses set ``Meta.model``)."""

    class Meta:
        fields = TARGET_STATE_FIELDS
        read_only_fields = fields


class ReleaseSerializer(serializers.ModelSerializer):
    """A release (subclasses set ``Meta.model`` and add their target's field)."""

    released_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )


class TargetStateFieldMixin:
    """A target's ``state`` field: its :class:`TargetStateSerializer`, or null."""

    state_serializer_class: type[TargetStateSerializer]

    def get_state(self, obj: RolloutTarget) -> dict[str, Any] | None:
        state = obj.current_state()
        return self.state_serializer_class(state).data if state else None


def refuse_disabled(targets: Iterable[Any]) -> None:
    """A rollout request naming disabled targets is a field error."""
    disabled = [target.name for target in targets if not target.enabled]
    if disabled:
        raise serializers.ValidationError(f"Disabled: {', '.join(disabled)}.")
