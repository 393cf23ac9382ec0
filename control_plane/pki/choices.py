"""Choices for the certificates app."""

from django.db import models


class TargetKind(models.TextChoices):
    """What a token or certificate is for (the rollout kinds' names)."""

    NODE = "node", "Node"
    GATEWAY = "gateway", "Gateway"


class CertificatePurpose(models.TextChoices):
    """Which link a certificate secures, hence which CA issued it (``shared.pki``)."""

    MANAGEMENT = "management", "Management (mutual TLS with the control plane)"
    INGRESS = "ingress", "Ingress (nginx, for clients in their tunnel)"
