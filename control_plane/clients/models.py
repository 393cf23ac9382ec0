"""Clients (the organisations that call the data plane) and their API keys."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.choices import ApiKeyStatus
from control_plane.clients.querysets import ApiKeyQuerySet, ClientQuerySet
from control_plane.clients.validators import bundle_name_validator, validate_name_list


class Client(ChangeLoggedModel):
    """An organisation that calls the data plane: its id in every bundle and receipt, its
    limits, and what it may use. Which models it may use is set on each ``ModelPin``."""

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
    embeddings = models.BooleanField(default=False, help_text="May call /v1/embeddings.")
    knowledge_bases = models.JSONField(
        default=list, blank=True, validators=[validate_name_list], help_text="Names."
    )
    max_sessions = models.PositiveIntegerField(
        default=8, validators=[MinValueValidator(1), MaxValueValidator(10_000)]
    )
    max_tokens_per_request = models.PositiveIntegerField(
        default=2048, validators=[MinValueValidator(1), MaxValueValidator(1_000_000)]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ClientQuerySet.as_manager()

    change_logged_fields = (
        "slug",
        "name",
        "description",
        "is_active",
        "embeddings",
        "knowledge_bases",
        "max_sessions",
        "max_tokens_per_request",
    )

    class Meta:
        ordering = ("slug",)

    def __str__(self) -> str:
        return self.slug


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
