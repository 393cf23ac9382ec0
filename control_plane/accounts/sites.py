"""The admin site: Django's, behind django-otp's ``OTPAdminSite``.

``SanctumAdminConfig`` (apps.py) makes this the default ``admin.site``, so every app's
``@admin.register`` lands here. The login form asks for the TOTP code of an enrolled
device (django-otp checks it, and throttles wrong codes); an operator who has no device
signs in with the password, and ``mfa.mfa_satisfied`` decides whether that is enough
(it is not for the roles that must use MFA: the enrolment middleware sends them to
enrol before anything else). The page links to single sign-on when it is configured.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from django_otp.plugins.otp_totp.models import TOTPDevice

from control_plane.accounts.mfa import mfa_satisfied


class OperatorLoginForm(OTPAdminAuthenticationForm):
    """User name, password and (for an enrolled operator) the code from their app."""

    def clean_otp(self, user: Any) -> None:
        # django-otp insists on a code from everyone; an operator without a device has
        # none to give, and the site's permission check (mfa_satisfied) and the
        # enrolment middleware decide what such a session may do.
        if user is not None and not user_has_device(user, confirmed=True):
            user.otp_device = None
            return
        super().clean_otp(user)

    def _chosen_device(self, user: Any) -> Any:
        # An operator has one TOTP device (enrolling another replaces it), so the page
        # asks for no choice of device: the code is checked against that one.
        chosen = super()._chosen_device(user)
        if chosen is None:
            chosen = TOTPDevice.objects.devices_for_user(user, confirmed=True).first()
        return chosen


class OperatorAdminSite(OTPAdminSite):
    site_header = "Sanctum control plane"
    site_title = "Sanctum"
    index_title = "Operations"
    login_form = OperatorLoginForm
    login_template = "accounts/login.html"

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)

    def has_permission(self, request: HttpRequest) -> bool:
        # AdminSite's (active staff) and then ours instead of OTPAdminSite's bare
        # is_verified(): a session that needs no code is let in too.
        return AdminSite.has_permission(self, request) and mfa_satisfied(request.user)

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        oidc = settings.SANCTUM.auth.oidc
        context["sso_provider"] = oidc.provider_name if oidc.enabled else None
        return context
