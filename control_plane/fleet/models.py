"""Nodes, their rollout and health state, and the signed config releases made for them."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.validators import bundle_name_validator
from control_plane.fleet.choices import HealthStatus, ReleaseStatus, RolloutState
from control_plane.fleet.querysets import ConfigReleaseQuerySet, NodeQuerySet
from shared.keys import KeyFileError, key_id, public_key_from_pem


def validate_public_key_pem(value: str) -> None:
    try:
        public_key_from_pem(value.strip(), source="the public key")
    except KeyFileError as exc:
        raise ValidationError(f"Paste the node's Ed25519 public key as PEM ({exc}).") from None


class Node(ChangeLoggedModel):
    """A data-plane node: where its management listener is and the key it signs with.

    The control plane pushes config to ``management_url`` (``PUT /internal/config``) and
    reads ``GET /internal/health`` there; the node's public key verifies the usage
    records it signs.
    """

    name = models.CharField(
        max_length=128,
        unique=True,
        validators=[bundle_name_validator],
        help_text="The node id; its bundles are made for this name.",
    )
    management_url = models.URLField(
        "management URL", help_text="Base URL of the node's management listener."
    )
    public_key = models.TextField("node public key (PEM)", validators=[validate_public_key_pem])
    enabled = models.BooleanField(default=True, help_text="Disabled nodes get no rollouts.")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = NodeQuerySet.as_manager()

    change_logged_fields = ("name", "management_url", "public_key", "enabled", "description")

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    @property
    def public_key_id(self) -> str:
        """RFC 7638 thumbprint of the node key (the ``kid`` in its signatures)."""
        if not self.public_key:
            return ""
        return key_id(public_key_from_pem(self.public_key.strip()))

    def endpoint(self, path: str) -> str:
        return self.management_url.rstrip("/") + path


class NodeState(models.Model):
    """What the control plane last learnt about a node: machine-written, not change-logged.

    ``applied_version`` is the config version the node holds as far as we know (from a
    push's answer or its health report); ``None`` means it holds none.
    """

    node = models.OneToOneField(
        Node, on_delete=models.CASCADE, primary_key=True, related_name="state"
    )
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
        verbose_name = "node state"

    def __str__(self) -> str:
        return f"state of {self.node_id}"


class ConfigRelease(ChangeLoggedModel):
    """Version ``version`` of one node's config: the bundle, signed, and its delivery.

    The bundle and its signature never change once made. ``status`` follows delivery:
    pending until the node applies it, failed (with the reason) while it can't be reached,
    rejected when the node refuses it, superseded when a newer release took its place.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="releases")
    version = models.PositiveBigIntegerField()
    bundle = models.JSONField(help_text="The bundle document (holds key hashes, no keys).")
    signed_bundle = models.TextField(help_text="Compact JWS, as pushed to the node.")
    bundle_sha256 = models.CharField("bundle SHA-256", max_length=64)
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

    objects = ConfigReleaseQuerySet.as_manager()

    # Delivery fields change with every push; the trail records the release itself.
    change_logged_fields = ("node", "version", "bundle_sha256", "released_by")

    class Meta:
        ordering = ("-created_at", "-version")
        verbose_name = "config release"
        constraints = [
            models.UniqueConstraint(fields=["node", "version"], name="fleet_release_node_version")
        ]

    def __str__(self) -> str:
        return f"{self.node_id and self.node.name} v{self.version}"

    @property
    def model_count(self) -> int:
        return len(self.bundle.get("models", []))

    @property
    def client_count(self) -> int:
        return len(self.bundle.get("clients", []))


def rollout_state(latest: ConfigRelease | None, state: NodeState | None) -> str:
    """Where a node stands against its latest release."""
    if latest is None:
        return RolloutState.NO_RELEASE
    applied = state.applied_version if state else None
    if applied is not None and applied >= latest.version:
        return RolloutState.IN_SYNC
    if latest.status == ReleaseStatus.REJECTED:
        return RolloutState.REJECTED
    if latest.status == ReleaseStatus.FAILED:
        return RolloutState.FAILED
    return RolloutState.PENDING
