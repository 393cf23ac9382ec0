"""Nodes, their rollout and health state, and the signed config releases made for them."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.validators import bundle_name_validator
from control_plane.core.models import Release, RolloutTarget, TargetState
from control_plane.fleet.choices import PoolKind
from control_plane.fleet.querysets import ConfigReleaseQuerySet, NodeQuerySet
from shared.keys import KeyFileError, key_id, public_key_from_pem


def validate_public_key_pem(value: str) -> None:
    try:
        public_key_from_pem(value.strip(), source="the public key")
    except KeyFileError as exc:
        raise ValidationError(f"Paste the node's Ed25519 public key as PEM ({exc}).") from None


DEFAULT_POOL = "default"


class NodePool(ChangeLoggedModel):
    """Nodes that serve the same clients and models: where a client is placed.

    A node belongs to one pool, a client is placed on one pool, and a model pin on the
    pools whose nodes load it; a node's config holds only what is placed on its pool.
    A *dedicated* pool serves exactly one client, so no other tenant's session ever
    runs on its nodes; a *shared* pool batches the sessions of its clients side by side,
    each in its own KV cells (docs/security.md says what that does and does not
    promise). Pool ``default`` (shared) is where nodes and clients go unless placed.
    """

    name = models.CharField(
        max_length=128,
        unique=True,
        validators=[bundle_name_validator],
        help_text="The pool's name; gateways and node configs know it by this.",
    )
    kind = models.CharField(max_length=16, choices=PoolKind.choices, default=PoolKind.SHARED)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    change_logged_fields = ("name", "kind", "description")

    class Meta:
        ordering = ("name",)
        verbose_name = "node pool"

    def __str__(self) -> str:
        return self.name

    @property
    def dedicated(self) -> bool:
        return self.kind == PoolKind.DEDICATED

    def clean(self) -> None:
        if self.pk:
            stored = NodePool.objects.filter(pk=self.pk).values_list("name", flat=True).first()
            if stored == DEFAULT_POOL and self.name != DEFAULT_POOL:
                raise ValidationError(
                    {
                        "name": f"Pool {DEFAULT_POOL} keeps its name: nodes and clients that are "
                        "not placed go to it."
                    }
                )
        if self.pk and self.dedicated:
            placed = self.clients.count()
            if placed > 1:
                raise ValidationError(
                    {
                        "kind": f"{placed} clients are placed on this pool; a dedicated pool "
                        "serves one. Move the others first."
                    }
                )


def default_pool_id() -> int:
    """The pool nodes and clients join unless placed, made when first needed.

    Made without ``save()``: it is the field default (called by migrations too, before
    the tables a change would release to exist), not an admin's change.
    """
    pool = NodePool(
        name=DEFAULT_POOL,
        kind=PoolKind.SHARED,
        description="Where nodes and clients go unless placed.",
    )
    NodePool.objects.bulk_create([pool], ignore_conflicts=True)
    return NodePool.objects.values_list("pk", flat=True).get(name=DEFAULT_POOL)


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
    pool = models.ForeignKey(
        NodePool,
        on_delete=models.PROTECT,
        related_name="nodes",
        default=default_pool_id,
        help_text="It serves the clients and models placed on this pool.",
    )
    draining = models.BooleanField(
        default=False,
        help_text="Draining: gateways send it no new sessions; its open sessions go on "
        "until they end. Disable it once it holds none.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled nodes get no rollouts.")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = NodeQuerySet.as_manager()

    change_logged_fields = (
        "name",
        "management_url",
        "public_key",
        "pool",
        "draining",
        "enabled",
        "description",
    )

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
