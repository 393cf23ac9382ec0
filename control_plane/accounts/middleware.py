"""Two middlewares around django-otp's: single sign-on sessions count as verified, and
an operator who must use MFA but has no device is sent to enrol before anything else.
The rules themselves are in ``mfa``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django_otp.middleware import OTPMiddleware

from control_plane.accounts.mfa import must_enrol, signed_in_with_sso


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
    reaches only the enrolment page and logging out until a device is confirmed.

    Requests authenticated by an API token carry no session user here (DRF
    authenticates them in the view), so the REST API is untouched.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if must_enrol(request.user) and not self._exempt(request.path):
            enrol = reverse("accounts:totp-enrol")
            return HttpResponseRedirect(f"{enrol}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)

    @staticmethod
    def _exempt(path: str) -> bool:
        return path in (reverse("accounts:totp-enrol"), reverse("admin:logout")) or (
            path.startswith("/" + settings.STATIC_URL.lstrip("/"))
        )
