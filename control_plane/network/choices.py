"""Choices for the network app."""

from django.db import models


class PeerStatus(models.TextChoices):
    """Whether a peer's tunnel is in the gateway config (derived, not stored)."""

    ACTIVE = "active", "Active"
    DISABLED = "disabled", "Disabled"
    EXPIRED = "expired", "Expired"
    CLIENT_INACTIVE = "client_inactive", "Client inactive"


class PoolPurpose(models.TextChoices):
    """What a pool's addresses are for."""

    TUNNEL = "tunnel", "Client tunnels (one gateway)"
    BACKBONE = "backbone", "Backbone (gateways and nodes)"
