"""Two middlewares around django-otp's: single sign-on sessions count as verified; an
operator who must use MFA but has no device is sent to enrol before anything else, and a
session that has not shown a code its user now owes (a device confirmed since it signed
in) is signed out everywhere, the REST API and the auditors' page included. The rules
themselves are in ``mfa``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django_otp.middleware import OTPMiddleware

from control_plane.accounts.mfa import mfa_satisfied, must_enrol, signed_in_with_sso


class OperatorOTPMiddleware(OTPMiddleware):
    """django-otp's middleware (``request.user.is_verified()``, ``otp_device``), and a
    session opened through the identity provider is verified: the provider asked for
    its second factor."""

    def _verify_user_sync(self, request: HttpRequest, user: Any) -> Any:
        user = super()._verify_user_sync(request, user)
        if user.is_authenticated and signed_in_with_sso(request):
            user.is_verified = lambda: True
        return user


class EnrolmentRequiredMiddleware:
    """A session that signed in with a password alone, for a role that must use MFA,
    reaches only the enrolment page and logging out until a device is confirmed. A
    session that signed in with a password alone and whose user has a confirmed device
    now (enrolled from another session, after this one signed in) is signed out, on
    every path: it never showed the code, and the admin site's own check covers the
    admin only.

    Requests authenticated by an API token carry no session user here (DRF
    authenticates them in the view), so token calls are untouched.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if must_enrol(user) and not self._exempt(request.path):
            enrol = reverse("accounts:totp-enrol")
            return HttpResponseRedirect(f"{enrol}?{urlencode({'next': request.get_full_path()})}")
        if user.is_authenticated and not mfa_satisfied(user) and not self._exempt(request.path):
            logout(request)
            sign_in = reverse("admin:login")
            return HttpResponseRedirect(f"{sign_in}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)

    @staticmethod
    def _exempt(path: str) -> bool:
        return path in (
            reverse("accounts:totp-enrol"),
            reverse("admin:logout"),
            reverse("admin:login"),
        ) or (path.startswith("/" + settings.STATIC_URL.lstrip("/")))
