"""Nodes, their rollout and health state, and the signed config releases made for them."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from control_plane.clients.validators import bundle_name_validator
from control_plane.core.models import Release, RolloutTarget, TargetState
from control_plane.fleet.querysets import ConfigReleaseQuerySet, NodeQuerySet
from shared.keys import KeyFileError, key_id, public_key_from_pem


def validate_public_key_pem(value: str) -> None:
    try:
        public_key_from_pem(value.strip(), source="the public key")
    except KeyFileError as exc:
        raise ValidationError(f"Paste the node's Ed25519 public key as PEM ({exc}).") from None


class Node(RolloutTarget):
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


class NodeState(TargetState):
    """What the control plane last learnt about a node: machine-written, not change-logged.

    ``applied_version`` is the config version the node holds as far as we know (from a
    push's answer or its health report); ``None`` means it holds none.
    """

    target_field = "node"

    node = models.OneToOneField(
        Node, on_delete=models.CASCADE, primary_key=True, related_name="state"
    )

    class Meta:
        verbose_name = "node state"


class ConfigRelease(Release):
    """Version ``version`` of one node's config: the bundle, signed, and its delivery.

    The bundle and its signature never change once made. ``status`` follows delivery:
    pending until the node applies it, failed (with the reason) while it can't be reached,
    rejected when the node refuses it, superseded when a newer release took its place.
    """

    target_field = "node"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="releases")
    document = models.JSONField(help_text="The bundle document (holds key hashes, no keys).")

    objects = ConfigReleaseQuerySet.as_manager()

    # Delivery fields change with every push; the trail records the release itself.
    change_logged_fields = ("node", "version", "document_sha256", "released_by")

    class Meta(Release.Meta):
        verbose_name = "config release"
        constraints = [
            models.UniqueConstraint(fields=["node", "version"], name="fleet_release_node_version")
        ]

    @property
    def model_count(self) -> int:
        return len(self.document.get("models", []))

    @property
    def client_count(self) -> int:
        return len(self.document.get("clients", []))
