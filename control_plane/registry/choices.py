"""Choices for model pins."""

from django.db import models


class HashStatus(models.TextChoices):
    PENDING = "pending", "Pending (being computed)"
    VERIFIED = "verified", "Verified"
    MISMATCH = "mismatch", "File changed since pinned"
    FAILED = "failed", "Could not read the file"
