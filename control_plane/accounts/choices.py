"""Operator roles."""

from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Admin (everything)"
    AUDITOR = "auditor", "Auditor (read-only)"
