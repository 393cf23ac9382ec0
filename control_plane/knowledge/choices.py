"""Choices for knowledge bases."""

from django.db import models


class CopyStatus(models.TextChoices):
    """Where one node stands with one document of the catalog."""

    LOADED = "loaded", "Loaded"
    # The node answered and refused the file (its reason is kept); it may still hold an
    # earlier version of the document.
    REFUSED = "refused", "Refused"
    # The node could not be reached or failed: it may hold an earlier version, or none.
    FAILED = "failed", "Not reached"


class FileStatus(models.TextChoices):
    """What happened to one file of a load, as the nodes answered (``sanctum kb``'s words)."""

    INGESTED = "ingested", "Ingested"
    UNCHANGED = "unchanged", "Unchanged"
    SKIPPED = "skipped", "Skipped"


class NodeOutcome(models.TextChoices):
    """How one node answered a load or a delete."""

    OK = "ok", "Answered"
    UNREACHABLE = "unreachable", "Unreachable"
    ERROR = "error", "Failed"
