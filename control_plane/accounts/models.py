"""Operators are Django users; roles are groups (see ``roles``).

The one model of our own links a user to the identity provider that vouches for them,
so a single sign-on finds its user by the provider's stable subject, never by an
e-mail address or a name that a local account could share.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class OperatorIdentity(models.Model):
    """A user who signs in through an OpenID Connect provider: its issuer and subject.

    Such a user has no usable password; their roles are re-read from the provider's
    claims at every sign-in (``services.sign_in_with_claims``).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identity"
    )
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="unique_sso_subject")
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.subject} at {self.issuer})"
