"""Who must present a TOTP code, and whether this session has.

django-otp does the checking: its middleware marks a session verified when the user
signed in with a code from a confirmed device (``user.is_verified()``), and the admin
site (``sites.OperatorAdminSite``, an ``OTPAdminSite``) lets in only verified users. This
module adds the two rules it leaves to us, in one place for the admin site and the
enrolment middleware:

* who needs a code: the roles in ``SANCTUM_CP_AUTH__MFA_REQUIRED_FOR`` (admins in
  production), and anyone who enrolled a device (once enrolled, always asked);
* single sign-on sessions count as verified: the identity provider owns their second
  factor, and they have no local password a code would protect.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY
from django.http import HttpRequest
from django_otp import user_has_device

from control_plane.accounts.choices import Role

OIDC_BACKEND = "control_plane.accounts.oidc.OperatorOIDCBackend"


def signed_in_with_sso(request: HttpRequest) -> bool:
    return request.session.get(BACKEND_SESSION_KEY) == OIDC_BACKEND


def user_roles(user: Any) -> set[str]:
    if user.is_superuser:
        return {Role.ADMIN.value}
    return set(user.groups.filter(name__in=Role.values).values_list("name", flat=True))


def mfa_required(user: Any) -> bool:
    """This local account must sign in with a TOTP code (and enrol one if it has none)."""
    required = set(settings.SANCTUM.mfa_required_roles)
    return bool(required and required & user_roles(user))


def mfa_satisfied(user: Any) -> bool:
    """The session may act as this user: it showed a code, or none is asked of it."""
    if not user.is_authenticated:
        return False
    if user.is_verified():
        return True
    return not mfa_required(user) and not user_has_device(user, confirmed=True)


def must_enrol(user: Any) -> bool:
    """Signed in with a password alone, and a code is required: enrol before anything."""
    return (
        user.is_authenticated
        and not user.is_verified()
        and mfa_required(user)
        and not user_has_device(user, confirmed=True)
    )
