"""TOTP for local operators: enrolment, sign-in with a code, and who must have one."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.test import override_settings
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from control_plane.accounts.services import create_operator
from control_plane.environment import ControlPlaneSettings

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"
ENROL = "/accounts/mfa/enrol/"


def _code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """What the operator's app shows now (or that many 30-second steps later: a code
    is accepted once, and the device's tolerance lets the next step's in)."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():0{device.digits}d}"


def _operator(name="alice", role="admin"):
    return create_operator(name, role, password=PASSWORD).user


def _sign_in(client, username="alice", password=PASSWORD, code=""):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password, "otp_token": code, "next": "/admin/"},
    )


def _production(**auth):
    cp = settings.SANCTUM.model_copy(update={"environment": "production"})
    if auth:
        cp = cp.model_copy(update={"auth": cp.auth.model_copy(update=auth)})
    return override_settings(SANCTUM=cp)


def _enrol(client) -> TOTPDevice:
    page = client.get(ENROL)
    assert page.status_code == 200
    device = TOTPDevice.objects.get(confirmed=False)
    assert page.context["secret"] in page.content.decode()
    assert "<svg" in page.content.decode()
    device.throttle_reset()  # a wrong code before makes django-otp hold the next one back
    response = client.post(ENROL + "?next=/admin/", {"token": _code(device)})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    device.refresh_from_db()
    assert device.confirmed
    return device


def test_in_development_a_password_is_enough_until_a_device_is_enrolled(client):
    _operator()

    assert _sign_in(client).status_code == 302
    assert client.get("/admin/").status_code == 200


def test_in_production_an_admin_without_a_device_is_sent_to_enrol_first(client):
    _operator()
    with _production():
        assert _sign_in(client).status_code == 302
        for path in ("/admin/", "/audit/", "/admin/clients/client/", "/api/clients/"):
            response = client.get(path)
            assert response.status_code == 302, path
            assert response["Location"].startswith(ENROL + "?next="), path

        wrong = client.post(ENROL, {"token": "000000"})
        assert wrong.status_code == 200 and "That code is not right" in wrong.content.decode()
        assert not TOTPDevice.objects.filter(confirmed=True).exists()

        _enrol(client)
        assert client.get("/admin/").status_code == 200


def test_production_asks_auditors_only_when_told(client):
    _operator("audrey", "auditor")
    with _production():
        _sign_in(client, "audrey")
        assert client.get("/admin/").status_code == 200
    client.logout()
    with _production(mfa_required_for=["admin", "auditor"]):
        _sign_in(client, "audrey")
        assert client.get("/admin/")["Location"].startswith(ENROL)


def test_an_enrolled_operator_signs_in_with_password_and_code(client):
    _operator()
    _sign_in(client)
    device = _enrol(client)
    client.logout()

    no_code = _sign_in(client)
    assert no_code.status_code == 200 and "Please enter your OTP token" in no_code.content.decode()
    wrong = _sign_in(client, code="123456" if _code(device, 1) != "123456" else "654321")
    assert wrong.status_code == 200 and client.get("/admin/").status_code == 302

    device.refresh_from_db()
    device.throttle_reset()  # django-otp makes the next try wait after a miss
    right = _sign_in(client, code=_code(device, steps_ahead=1))
    assert right.status_code == 302, right.context["form"].errors
    assert client.get("/admin/").status_code == 200


def test_api_tokens_are_not_asked_for_a_code(admin_api):
    with _production():
        assert admin_api.get("/api/clients/").status_code == 200


def test_production_settings_default_to_admins_and_refuse_dropping_them():
    cp = ControlPlaneSettings()
    assert cp.mfa_required_roles == []
    assert cp.model_copy(update={"environment": "production"}).mfa_required_roles == ["admin"]
    with pytest.raises(ValueError, match="MFA_REQUIRED_FOR must include admin"):
        ControlPlaneSettings(environment="production", auth={"mfa_required_for": ["auditor"]})


def test_a_session_that_never_showed_a_code_is_signed_out_once_its_user_enrols(client):
    """Someone holding a password-only session from before the enrolment (a shared
    first password, say) can't go on using it: not the admin, not the REST API, not the
    auditors' page."""
    alice = _operator()
    stale = client.__class__()
    stale.force_login(alice)  # signed in with the password alone, no device yet
    assert stale.get("/api/clients/").status_code == 200

    TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)
    for path in ("/api/clients/", "/audit/", "/admin/"):
        response = stale.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/admin/login/"), path
    assert stale.get("/api/clients/").status_code in (401, 403)  # signed out for good


def test_an_admin_sees_another_operators_device_but_never_its_secret(client):
    bob = _operator("bob")
    device = TOTPDevice.objects.create(user=bob, name="bob's phone", confirmed=True)
    alice = _operator("alice")
    client.force_login(alice)
    alice_device = TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)
    session = client.session
    session["otp_device_id"] = alice_device.persistent_id  # alice showed her code
    session.save()

    page = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/")
    assert page.status_code == 200
    assert device.key not in page.content.decode()
    assert client.get(f"/admin/otp_totp/totpdevice/{device.pk}/config/").status_code == 403
    assert client.get(f"/admin/otp_totp/totpdevice/{device.pk}/qrcode/").status_code == 403


def test_a_secret_shown_to_an_earlier_session_is_never_the_one_confirmed(client):
    alice = _operator()
    earlier = client.__class__()
    earlier.force_login(alice)
    assert earlier.get(ENROL).status_code == 200
    seen_before = TOTPDevice.objects.get(user=alice, confirmed=False)

    client.force_login(alice)
    device = _enrol(client)
    assert device.pk != seen_before.pk and device.key != seen_before.key
    assert not TOTPDevice.objects.filter(pk=seen_before.pk).exists()
