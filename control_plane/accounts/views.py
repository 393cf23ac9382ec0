"""Operators' sign-in pages: single sign-on's two ends and TOTP enrolment.

Thin: the rules are in ``services`` (claims to roles, enrolment) and ``mfa`` (who needs
a code); mozilla-django-oidc's views do the protocol (state, nonce, PKCE).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import qrcode
import qrcode.image.svg
from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import logout
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.generic import FormView, View
from django_otp import login as otp_login
from django_otp import user_has_device
from django_otp.plugins.otp_totp.models import TOTPDevice
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
)

from control_plane.accounts.choices import Role
from control_plane.accounts.mfa import user_roles
from control_plane.accounts.oidc import REFUSAL_ATTRIBUTE, ProviderUnavailable, provider_endpoints
from control_plane.accounts.services import (
    confirm_totp_enrolment,
    pending_totp_device,
    start_totp_enrolment,
)


def landing_page(user: Any) -> str:
    """Where an operator lands after signing in: admins the admin, auditors their page."""
    if Role.ADMIN.value in user_roles(user):
        return reverse("admin:index")
    return reverse("audit:receipts")


class SignInStartView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider (state, nonce and PKCE kept in the session)."""

    def __init__(self, **kwargs: Any) -> None:
        # Not the parent's, which reads the endpoint from Django settings: it may have
        # to be discovered, which happens per request (below), not at construction.
        View.__init__(self, **kwargs)
        self.OIDC_RP_CLIENT_ID = settings.SANCTUM.auth.oidc.client_id

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider_endpoints().authorization_endpoint
        except ProviderUnavailable:
            return _refused(
                request,
                "The sign-in provider can't be reached just now; try again, or sign in "
                "with a local account.",
                status=503,
            )
        return super().get(request)


class SignInCallbackView(OIDCAuthenticationCallbackView):
    """The provider's answer: signs the operator in, or says plainly why not (403)."""

    @property
    def success_url(self) -> str:
        next_url = self.request.session.get("oidc_login_next")
        return next_url or landing_page(self.user)

    def login_failure(self) -> HttpResponse:
        reason = getattr(self.request, REFUSAL_ATTRIBUTE, None)
        if self.request.GET.get("error"):
            reason = "The sign-in provider did not sign you in (it answered: " + (
                self.request.GET.get("error", "")[:64] + ")."
            )
        return _refused(
            self.request,
            reason or "The sign-in provider's answer could not be checked; start again.",
            status=403,
        )

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            return super().get(request)
        except ProviderUnavailable:
            return _refused(request, "The sign-in provider can't be reached just now.", 503)


def _refused(request: HttpRequest, reason: str, status: int) -> HttpResponse:
    context = {**admin.site.each_context(request), "title": "Not signed in", "reason": reason}
    return render(request, "accounts/sign_in_refused.html", context, status=status)


class TotpCodeForm(forms.Form):
    token = forms.CharField(
        label="Code from the app",
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


PENDING_DEVICE = "sanctum_totp_pending"


class TotpEnrolView(LoginRequiredMixin, FormView):
    """Shows a new TOTP secret (QR code and text) and confirms it with a first code."""

    template_name = "accounts/totp_enrol.html"
    form_class = TotpCodeForm

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user: Any = request.user  # with django-otp's is_verified()
        if (
            user.is_authenticated
            and user_has_device(user, confirmed=True)
            and not user.is_verified()
        ):
            # A device exists and this session never showed its code: replacing it
            # needs that code first (sign in again).
            logout(request)
            return HttpResponseRedirect(reverse("admin:login"))
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Each visit shows a secret made now, bound to this session (an earlier
        # session's pending secret is deleted: whoever saw it does not know this one).
        device = start_totp_enrolment(request.user)  # type: ignore[arg-type]
        request.session[PENDING_DEVICE] = device.pk
        return super().get(request, *args, **kwargs)

    def _device(self) -> TOTPDevice:
        """The secret this session was shown (a wrong code shows it again)."""
        user: Any = self.request.user
        device = pending_totp_device(user, self.request.session.get(PENDING_DEVICE))
        if device is None:
            device = start_totp_enrolment(user)
            self.request.session[PENDING_DEVICE] = device.pk
        return device

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        device = self._device()
        svg = io.BytesIO()
        qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage).save(svg)
        context.update(admin.site.each_context(self.request))
        context.update(
            title="Set up an authenticator app",
            qr_svg=svg.getvalue().decode("utf-8"),
            secret=base64.b32encode(device.bin_key).decode("ascii"),
            required=settings.SANCTUM.mfa_required_roles,
        )
        return context

    def form_valid(self, form: TotpCodeForm) -> HttpResponse:
        device = self._device()
        if not confirm_totp_enrolment(device, form.cleaned_data["token"]):
            form.add_error("token", "That code is not right (or came too soon after a wrong one).")
            return self.form_invalid(form)
        otp_login(self.request, device)
        next_url = self.request.GET.get("next", "")
        if not url_has_allowed_host_and_scheme(
            next_url,
            allowed_hosts={self.request.get_host()},
            require_https=self.request.is_secure(),
        ):
            next_url = landing_page(self.request.user)
        return HttpResponseRedirect(next_url)
