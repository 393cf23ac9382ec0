"""Choices of the rollout mechanism, shared by every kind of target."""

from django.db import models


class ReleaseStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPLIED = "applied", "Applied"
    FAILED = "failed", "Failed (will retry)"
    REJECTED = "rejected", "Rejected (not retried)"
    SUPERSEDED = "superseded", "Superseded"


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    OK = "ok", "OK"
    UNREACHABLE = "unreachable", "Unreachable"
    ERROR = "error", "Answered with an error"


class RolloutState(models.TextChoices):
    """A target's position relative to its latest release (derived, not stored)."""

    NO_RELEASE = "no_release", "No release yet"
    IN_SYNC = "in_sync", "In sync"
    OUT_OF_DATE = "out_of_date", "Out of date (release on its way)"
    FAILED = "failed", "Out of date (push failed, will retry)"
    REJECTED = "rejected", "Out of date (release rejected)"
