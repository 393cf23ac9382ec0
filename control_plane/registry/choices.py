"""Choices for model pins."""

from django.db import models


class HashStatus(models.TextChoices):
    PENDING = "pending", "Pending (being computed)"
    VERIFIED = "verified", "Verified"
    # A pin by source: the admin gave the sha256 and size (the publisher's checksums);
    # the control plane holds no copy, and every node checks the file it fetches.
    DECLARED = "declared", "Declared (nodes verify the file they fetch)"
    MISMATCH = "mismatch", "File changed since pinned"
    FAILED = "failed", "Could not read the file"
