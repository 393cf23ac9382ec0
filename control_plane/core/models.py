"""Abstract models of the one rollout mechanism (``control_plane.core.rollout``).

A *target* is something on the management link that holds a signed document made here:
a data-plane node (its config bundle) or a gateway (its gateway config). Each kind has
three concrete models, thin subclasses of these:

- the target itself (:class:`RolloutTarget`: ``name``, ``management_url``, ``enabled``,
  and a reverse ``releases`` relation and ``state`` one-to-one);
- its releases (:class:`Release`): one per version, the signed document and its delivery;
- what we last learnt about it (:class:`TargetState`): machine-written, not change-logged.

The concrete release and state models add the foreign key to their target and name it in
``target_field``; the rollout code reaches the target through :attr:`Release.target`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Self

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import models

from control_plane.changes.models import ChangeLoggedModel
from control_plane.core.choices import HealthStatus, ReleaseStatus, RolloutState

if TYPE_CHECKING:
    from control_plane.core.querysets import ReleaseManager, RolloutTargetManager


class RolloutTarget(ChangeLoggedModel):
    """A node or gateway: something the control plane pushes signed documents to.

    Concrete subclasses define ``name`` (the audience of our signed requests, and the
    name the document is made for), ``management_url`` and ``enabled``.
    """

    if TYPE_CHECKING:
        # What each concrete target defines (fields, its state's reverse one-to-one, a
        # manager from its kind's RolloutTargetQuerySet), for the code generic over kinds.
        name: str
        management_url: str
        enabled: bool
        state: TargetState
        objects: RolloutTargetManager[Self]

    class Meta:
        abstract = True

    def endpoint(self, path: str) -> str:
        """The URL of ``path`` (``shared.management``) on the target's management listener."""
        return self.management_url.rstrip("/") + path

    def current_state(self) -> TargetState | None:
        """What we last learnt about the target, or ``None`` before the first contact."""
        try:
            return self.state
        except ObjectDoesNotExist:
            return None


class TargetState(models.Model):
    """What the control plane last learnt about a target: machine-written, not logged.

    ``applied_version`` is the version the target holds as far as we know (from a push's
    answer or its health report); ``None`` means it holds none.
    """

    target_field: ClassVar[str]
    if TYPE_CHECKING:
        objects: ClassVar[models.Manager[Self]]

    applied_version = models.PositiveBigIntegerField(null=True, blank=True)
    last_push_at = models.DateTimeField(null=True, blank=True)
    last_push_error = models.TextField(blank=True)
    health_status = models.CharField(
        max_length=16, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN
    )
    health = models.JSONField(null=True, blank=True)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_error = models.TextField(blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"state of {getattr(self, f'{self.target_field}_id')}"


class Release(ChangeLoggedModel):
    """Version ``version`` of one target's document: the document, signed, and its delivery.

    The document and its signature never change once made. ``status`` follows delivery:
    pending until the target applies it, failed (with the reason) while it can't be
    reached, rejected when the target refuses it, superseded when a newer release took
    its place.
    """

    target_field: ClassVar[str]
    if TYPE_CHECKING:
        # Each concrete release model's manager comes from its kind's ReleaseQuerySet.
        objects: ReleaseManager[Self]

    version = models.PositiveBigIntegerField()
    document = models.JSONField(help_text="The document as signed.")
    signed_document = models.TextField(help_text="Compact JWS, as pushed to the target.")
    document_sha256 = models.CharField("document SHA-256", max_length=64)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(
        max_length=16, choices=ReleaseStatus.choices, default=ReleaseStatus.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ("-created_at", "-version")

    def __str__(self) -> str:
        return f"{self.target_id and self.target.name} v{self.version}"

    @property
    def target(self) -> RolloutTarget:
        return getattr(self, self.target_field)

    @property
    def target_id(self) -> int | None:
        return getattr(self, f"{self.target_field}_id")

    @property
    def settled(self) -> bool:
        """Delivery is over: a push would send nothing."""
        return self.status in (
            ReleaseStatus.APPLIED,
            ReleaseStatus.REJECTED,
            ReleaseStatus.SUPERSEDED,
        )


# What the admin and the REST API show of a release, in this order (after its target).
RELEASE_FIELDS = (
    "version",
    "status",
    "attempts",
    "last_error",
    "last_attempt_at",
    "applied_at",
    "released_by",
    "created_at",
    "document_sha256",
)


def rollout_state(
    latest_version: int | None, latest_status: str | None, applied_version: int | None
) -> str:
    """Where a target stands against its latest release (the API's ``rollout``).

    The one place that compares what a target holds with what it should hold.
    """
    if latest_version is None:
        return RolloutState.NO_RELEASE
    if applied_version is not None and applied_version >= latest_version:
        return RolloutState.IN_SYNC
    if latest_status == ReleaseStatus.REJECTED:
        return RolloutState.REJECTED
    if latest_status == ReleaseStatus.FAILED:
        return RolloutState.FAILED
    return RolloutState.OUT_OF_DATE
