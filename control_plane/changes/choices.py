"""Choices for the change trail."""

from django.db import models


class ChangeAction(models.TextChoices):
    CREATE = "create", "Created"
    UPDATE = "update", "Updated"
    DELETE = "delete", "Deleted"
    ISSUE_KEY = "issue_key", "Issued key"
    ROTATE_KEY = "rotate_key", "Rotated key"
    REVOKE_KEY = "revoke_key", "Revoked key"
    VERIFY_HASH = "verify_hash", "Verified hash"
    ROLL_OUT = "roll_out", "Rolled out"
    LOAD = "load", "Loaded onto the nodes"


class ChangeSource(models.TextChoices):
    """Where a change came from, so the trail tells a console edit from a task."""

    ADMIN = "admin", "Admin console"
    API = "api", "REST API"
    TASK = "task", "Background task"
    COMMAND = "command", "Management command"
    SYSTEM = "system", "System"
