"""Choices for nodes and their pools."""

from django.db import models


class PoolKind(models.TextChoices):
    """Who a pool's nodes serve: one client only, or several side by side."""

    DEDICATED = "dedicated", "Dedicated (one client)"
    SHARED = "shared", "Shared (several clients)"
