"""Choices for nodes and releases."""

from django.db import models


class ReleaseStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPLIED = "applied", "Applied"
    FAILED = "failed", "Failed (will retry)"
    REJECTED = "rejected", "Rejected by the node"
    SUPERSEDED = "superseded", "Superseded"


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    OK = "ok", "OK"
    UNREACHABLE = "unreachable", "Unreachable"
    ERROR = "error", "Answered with an error"


class RolloutState(models.TextChoices):
    """A node's position relative to its latest release (derived, not stored)."""

    NO_RELEASE = "no_release", "No release yet"
    IN_SYNC = "in_sync", "In sync"
    PENDING = "pending", "Pending"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"
