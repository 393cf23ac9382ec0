"""Enrolment tokens and the certificates the control plane's CAs issued.

A node or gateway enrols once: an admin makes an :class:`EnrolmentToken` for it (one
use, expiring, kept as a hash), and ``sanctum enrol`` on the host sends a CSR with it.
Each certificate issued is an :class:`IssuedCertificate`, which also records the public
key from that CSR: renewals are issued for the same key, by the rollout, without the
host taking part (docs/security.md, "The management link").
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models

from control_plane.changes.models import ChangeLoggedModel
from control_plane.pki.choices import CertificatePurpose, TargetKind
from control_plane.pki.querysets import EnrolmentTokenQuerySet, IssuedCertificateQuerySet


class EnrolmentToken(ChangeLoggedModel):
    """A one-time, expiring permission for one node or gateway to get its certificates.

    The token's secret is shown once, when it is made; only its SHA-256 is stored. The
    token text also carries the management CA's fingerprint, which the host pins.
    """

    change_logged_fields = ("kind", "target_name", "token_id", "expires_at", "used_at")

    kind = models.CharField(max_length=16, choices=TargetKind.choices)
    target_name = models.CharField(
        "target", max_length=128, help_text="The node id or gateway name, as registered."
    )
    token_id = models.CharField("token id", max_length=8, unique=True, editable=False)
    secret_sha256 = models.CharField(max_length=64, editable=False)
    ca_fingerprint = models.CharField("CA fingerprint (SHA-256)", max_length=64, editable=False)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EnrolmentTokenQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.kind} {self.target_name} ({self.token_id})"

    def usable(self, now: datetime) -> bool:
        return self.used_at is None and now < self.expires_at


class IssuedCertificate(ChangeLoggedModel):
    """One certificate issued to a target (or to the control plane itself), with the
    public key it was issued for. Never a private key: those stay on their hosts."""

    change_logged_fields = ("kind", "target_name", "purpose", "serial", "not_after")

    kind = models.CharField(max_length=16, choices=TargetKind.choices)
    target_name = models.CharField("target", max_length=128)
    purpose = models.CharField(max_length=16, choices=CertificatePurpose.choices)
    serial = models.CharField(max_length=40, unique=True)
    public_key = models.TextField("public key (PEM)", help_text="From the enrolment CSR.")
    certificate = models.TextField("certificate (PEM)")
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    enrolment = models.ForeignKey(
        EnrolmentToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = IssuedCertificateQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["kind", "target_name", "purpose"])]

    def __str__(self) -> str:
        return f"{self.purpose} certificate of {self.kind} {self.target_name} ({self.serial})"
