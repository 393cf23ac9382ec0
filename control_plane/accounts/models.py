"""Operators are Django users; roles are groups (see ``roles``).

Two models of our own: :class:`OperatorIdentity` links a user to the identity provider
that vouches for them, so a single sign-on finds its user by the provider's stable
subject, never by an e-mail address or a name that a local account could share;
:class:`AuditorScope` says which clients an auditor is scoped to.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from control_plane.accounts.choices import Role
from control_plane.changes.models import ChangeLoggedModel

__all__ = ["AuditorScope", "OperatorIdentity"]


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


class AuditorScope(ChangeLoggedModel):
    """An auditor who may audit only ``clients``: their receipts, bundles and charts.

    Having a scope is what makes an auditor scoped: with no clients listed it sees no
    client at all (never everyone), so unassigning the last client or deleting it can't
    widen what the auditor sees. An auditor without a scope is the operator's own and
    sees every client. Enforced in one place, ``control_plane.audit.scopes``; a scoped
    auditor also holds no permission outside the audit pages
    (``control_plane.audit.backends``).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="auditor_scope",
        verbose_name="auditor",
    )
    clients = models.ManyToManyField(
        "clients.Client",
        blank=True,
        related_name="auditor_scopes",
        help_text="The only clients this auditor sees. None: no client at all.",
    )

    change_logged_fields = ("user", "clients")

    class Meta:
        verbose_name = "auditor scope"

    def __str__(self) -> str:
        return f"scope of {self.user}"

    def clean(self) -> None:
        user = getattr(self, "user", None)
        if user is None or user.pk is None:
            return  # a user being added on the same form has no groups yet
        if user.is_superuser or user.groups.filter(name=Role.ADMIN).exists():
            raise ValidationError(
                {"user": "Only auditors are scoped to clients; this operator is an admin."}
            )
