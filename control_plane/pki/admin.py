"""Admin console pages for enrolment tokens and issued certificates.

Adding a token is the only way to see its text: the save calls
``create_enrolment_token`` and the message shown once holds the token (with the CA
fingerprint in it). Certificates are read-only: the CAs issue them, nobody edits them.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest

from control_plane.core.errors import Conflict
from control_plane.pki.models import EnrolmentToken, IssuedCertificate
from control_plane.pki.services import create_enrolment_token


class EnrolmentTokenForm(forms.ModelForm):
    lifetime_seconds = forms.IntegerField(
        min_value=60,
        required=False,
        help_text="Default: SANCTUM_CP_TLS__ENROLMENT_TOKEN_LIFETIME_SECONDS.",
    )

    class Meta:
        model = EnrolmentToken
        fields = ("kind", "target_name")


@admin.register(EnrolmentToken)
class EnrolmentTokenAdmin(admin.ModelAdmin):
    list_display = ("target_name", "kind", "token_id", "expires_at", "used_at", "created_by")
    list_filter = ("kind",)
    search_fields = ("target_name", "token_id")
    readonly_fields = (
        "token_id",
        "ca_fingerprint",
        "expires_at",
        "used_at",
        "created_by",
        "created_at",
    )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = EnrolmentTokenForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: EnrolmentToken | None = None) -> Any:
        if obj is None:
            return ("kind", "target_name", "lifetime_seconds")
        return ("kind", "target_name", *self.readonly_fields)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(
        self, request: HttpRequest, obj: EnrolmentToken, form: Any, change: bool
    ) -> None:
        try:
            issued = create_enrolment_token(
                obj.kind,
                obj.target_name,
                lifetime_seconds=form.cleaned_data.get("lifetime_seconds")
                or settings.SANCTUM.tls.enrolment_token_lifetime_seconds,
            )
        except Conflict as exc:
            messages.error(request, str(exc))
            return
        obj.pk = issued.token.pk
        messages.warning(
            request,
            f"Enrolment token for {obj.kind} {obj.target_name} (shown once, single use, "
            f"expires {issued.token.expires_at:%Y-%m-%d %H:%M} UTC): {issued.text}",
        )


@admin.register(IssuedCertificate)
class IssuedCertificateAdmin(admin.ModelAdmin):
    list_display = ("target_name", "kind", "purpose", "serial", "not_after", "created_at")
    list_filter = ("kind", "purpose")
    search_fields = ("target_name", "serial")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
