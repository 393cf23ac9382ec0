"""Querysets of the certificates app."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from control_plane.pki.models import EnrolmentToken, IssuedCertificate


class EnrolmentTokenQuerySet(models.QuerySet["EnrolmentToken"]):
    def usable(self, now: datetime) -> EnrolmentTokenQuerySet:
        """Not used yet and not expired."""
        return self.filter(used_at__isnull=True, expires_at__gt=now)


class IssuedCertificateQuerySet(models.QuerySet["IssuedCertificate"]):
    def of(self, kind: str, name: str, purpose: str) -> IssuedCertificateQuerySet:
        return self.filter(kind=kind, target_name=name, purpose=purpose)

    def latest_of(self, kind: str, name: str, purpose: str) -> IssuedCertificate | None:
        """The one a target uses now: the latest made (renewals only ever extend)."""
        return self.of(kind, name, purpose).order_by("-created_at", "-pk").first()
