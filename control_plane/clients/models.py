"""Clients (the organisations that call the data plane) and their API keys."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.choices import ApiKeyStatus
from control_plane.clients.querysets import ApiKeyQuerySet, ClientQuerySet
from control_plane.clients.validators import bundle_name_validator
from control_plane.fleet.models import NodePool, default_pool_id

# The most the config contract takes for a count (``shared.config.Count``).
MAX_TOKENS = 10**15
# Limits that are the client's in all, of which each node enforces a share.
RATE_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month")


class Client(ChangeLoggedModel):
    """An organisation that calls the data plane: its id in every bundle and receipt, its
    limits, and what it may use. Which models it may use is set on each ``ModelPin``;
    which knowledge bases it may search are its ``KnowledgeBase`` rows
    (``client.knowledge_bases``, in ``control_plane.knowledge``)."""

    slug = models.CharField(
        "client ID",
        max_length=128,
        unique=True,
        validators=[bundle_name_validator],
        help_text="The id nodes, receipts and auditors know this client by.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(
        "active", default=True, help_text="Inactive clients are left out of the config."
    )
    pool = models.ForeignKey(
        NodePool,
        on_delete=models.PROTECT,
        related_name="clients",
        default=default_pool_id,
        verbose_name="node pool",
        help_text="The nodes that serve it: only this pool's nodes hold its keys.",
    )
    embeddings = models.BooleanField(default=False, help_text="May call /v1/embeddings.")
    max_sessions = models.PositiveIntegerField(
        default=8, validators=[MinValueValidator(1), MaxValueValidator(10_000)]
    )
    max_tokens_per_request = models.PositiveIntegerField(
        default=2048, validators=[MinValueValidator(1), MaxValueValidator(1_000_000)]
    )
    # Rates and quotas: the client's in all; each node enforces its share (see
    # ``limit_shares``). Empty means no limit.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: no limit."
    )
    tokens_per_minute = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TOKENS)],
        help_text="Prompt and completion tokens. Empty: no limit.",
    )
    tokens_per_day = models.PositiveBigIntegerField(
        "token quota per day",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TOKENS)],
        help_text="UTC day. Empty: no quota.",
    )
    tokens_per_month = models.PositiveBigIntegerField(
        "token quota per month",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TOKENS)],
        help_text="UTC calendar month. Empty: no quota.",
    )
    # What it may hold of each node's engine. Empty: the node's default.
    max_running_generations = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(4096)],
        help_text="Generations decoding at once on a node. Empty: the node's default.",
    )
    max_queued_generations = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(100_000)],
        help_text="Generations waiting for a slot on a node. Empty: the node's default.",
    )
    max_parked_kv_mib = models.PositiveIntegerField(
        "parked KV cache (MiB)",
        null=True,
        blank=True,
        validators=[MaxValueValidator(1 << 30)],
        help_text="RAM for its idle sessions' KV state on a node. Empty: the node's default.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ClientQuerySet.as_manager()

    change_logged_fields = (
        "slug",
        "name",
        "description",
        "is_active",
        "pool",
        "embeddings",
        "max_sessions",
        "max_tokens_per_request",
        *RATE_FIELDS,
        "max_running_generations",
        "max_queued_generations",
        "max_parked_kv_mib",
    )

    class Meta:
        ordering = ("slug",)

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from control_plane.fleet.placement import check_client_placement

        if self.pool_id is not None:
            check_client_placement(self.pool, self)

    def limit_shares(self, nodes: int) -> list[dict[str, int | None]]:
        """Each of ``nodes`` nodes' share of the rates and quotas: they add up to the
        client's own (the first nodes take one more where it does not divide), and a
        node's share is at least 1 (so, with fewer units than nodes, a little more)."""
        shares: list[dict[str, int | None]] = [{} for _ in range(max(1, nodes))]
        for name in RATE_FIELDS:
            total = getattr(self, name)
            for i, share in enumerate(shares):
                if total is None:
                    share[name] = None
                else:
                    base, extra = divmod(total, len(shares))
                    share[name] = max(1, base + (1 if i < extra else 0))
        return shares


class ApiKey(ChangeLoggedModel):
    """A client's API key, known here only by its public prefix and its SHA-256.

    The key itself exists once, in the answer that issued (or rotated) it. Rotating gives
    the same slot a new secret; revoking is final. Nodes learn of either at the next
    rollout, and check ``expires_at`` themselves.
    """

    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, help_text="What the key is for.")
    prefix = models.CharField(max_length=8, unique=True, editable=False)
    sha256 = models.CharField("SHA-256", max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_reason = models.CharField(max_length=200, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    # Never "sha256": the trail records metadata, not what authenticates.
    change_logged_fields = (
        "client",
        "name",
        "prefix",
        "created_at",
        "last_rotated_at",
        "expires_at",
        "revoked_at",
        "revoked_reason",
    )

    class Meta:
        ordering = ("-created_at", "-pk")
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix} ({self.client_id and self.client.slug})"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return ApiKeyStatus.REVOKED
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return ApiKeyStatus.EXPIRED
        return ApiKeyStatus.ACTIVE
