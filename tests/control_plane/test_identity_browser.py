"""Operators' identity in a real browser, against a real control plane (gunicorn) and a
real OpenID Connect provider process (oidc-provider-mock) on loopback:

* single sign-on: an admin-claimed user lands on the admin with the admin role, an
  auditor-claimed one on the auditors' page without admin rights, one with neither is
  refused with a page that says why;
* TOTP: a local admin enrols (the key read from the page) and signs in with password and
  code; a wrong code is refused;
* lockout: repeated wrong passwords lock the account, and ``axes_reset`` unlocks it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
import time

import httpx
import pytest
from django_otp.oath import TOTP

from tests.conftest import free_port
from tests.control_plane.browser import chromium
from tests.control_plane.processes import Process

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

USERS = [
    {
        "sub": "ada-1",
        "preferred_username": "ada",
        "email": "ada@example.com",
        "groups": ["staff", "sanctum-admins"],
    },
    {
        "sub": "aud-2",
        "preferred_username": "audrey",
        "email": "audrey@example.com",
        "groups": ["sanctum-auditors"],
    },
    {"sub": "mal-3", "preferred_username": "mallory", "groups": ["staff"]},
]


@pytest.fixture
def identity_provider():
    """oidc-provider-mock on a free loopback port: any client id and secret, nonces
    required, the users above (each signs in by picking their subject on its form)."""
    if importlib.util.find_spec("oidc_provider_mock") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("oidc-provider-mock is not installed (make setup installs it)")
        pytest.skip("oidc-provider-mock is not installed")
    port = free_port()
    argv = [sys.executable, "-m", "oidc_provider_mock", "--port", str(port), "--require-nonce"]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    provider = Process("oidc-provider-mock", argv, {**os.environ, "NO_COLOR": "1"})
    issuer = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or provider.proc.poll() is not None:
            provider.stop()
            raise RuntimeError("oidc-provider-mock did not start:\n" + provider.tail())
        time.sleep(0.2)
    yield issuer
    provider.stop()


def _totp(secret_b32: str, steps_ahead: int = 0) -> str:
    totp = TOTP(base64.b32decode(secret_b32))
    totp.time = time.time() + 30 * steps_ahead
    return f"{totp.token():06d}"


def test_operators_sign_in_with_sso_totp_and_lockout(
    control_plane_factory, identity_provider, tmp_path
):
    secret = tmp_path / "oidc-client-secret"
    secret.write_text("not-checked-by-the-mock\n")
    cp = control_plane_factory(
        SANCTUM_CP_AUTH__OIDC__ISSUER=identity_provider,
        SANCTUM_CP_AUTH__OIDC__CLIENT_ID="sanctum-control-plane",
        SANCTUM_CP_AUTH__OIDC__CLIENT_SECRET_FILE=str(secret),
        SANCTUM_CP_AUTH__OIDC__PROVIDER_NAME="Example IdP",
        # As production does: local admins need a code; single sign-on skips it.
        SANCTUM_CP_AUTH__MFA_REQUIRED_FOR="admin",
    )
    cp.manage("migrate", "-v0")
    root = cp.manage("create_operator", "root", "--role", "admin")["SANCTUM_OPERATOR_PASSWORD"]
    carol = cp.manage("create_operator", "carol", "--role", "auditor")
    carol_password = carol["SANCTUM_OPERATOR_PASSWORD"]
    cp.serve()
    base = cp.admin_url.removesuffix("/admin/")

    with chromium() as browser:
        try:

            def sso(subject: str, start: str = cp.admin_url):
                page = browser.new_context().new_page()
                page.goto(start)  # -> the login page
                page.click("text=Sign in with Example IdP")
                page.wait_for_url(identity_provider + "/**")
                page.click(f"button[name=sub][value='{subject}']")
                page.wait_for_load_state()
                return page

            # (a) single sign-on: the admin role, then the auditor role, then no role.
            page = sso("ada-1")
            page.wait_for_selector("#site-name")
            assert page.url == cp.admin_url
            assert page.text_content("#user-tools strong") == "ada"
            users = page.goto(cp.admin_url + "auth/user/")
            assert users is not None and users.status == 200  # an admin's page
            assert "ada" in page.inner_text("#result_list")

            page = sso("aud-2", start=base + "/audit/")
            page.wait_for_url(base + "/audit/")
            assert "Receipts and the ledger" in page.content()
            users = page.goto(cp.admin_url + "auth/user/")
            assert users is not None and users.status == 403  # no admin rights

            page = sso("mal-3")
            assert "holds no Sanctum role" in page.inner_text("#sign-in-refused")
            assert page.goto(cp.admin_url + "auth/user/").url.startswith(cp.admin_url + "login/")

            # (b) TOTP: a local admin must enrol, then signs in with a code.
            def sign_in(page, username: str, password: str, code: str = ""):
                page.goto(cp.admin_url)
                page.fill("#id_username", username)
                page.fill("#id_password", password)
                page.fill("#id_otp_token", code)
                page.click("input[type=submit]")
                page.wait_for_load_state()

            page = browser.new_context().new_page()
            sign_in(page, "root", root)
            page.wait_for_url(base + "/accounts/mfa/enrol/**")
            assert page.is_visible("#totp-qr svg")
            key = page.inner_text("#totp-secret")
            page.fill("#id_token", _totp(key))
            page.click("input[type=submit]")
            page.wait_for_selector("#site-name")
            assert page.url == cp.admin_url

            page = browser.new_context().new_page()
            sign_in(page, "root", root, code="000000" if _totp(key, 1) != "000000" else "111111")
            assert "Invalid token" in page.inner_text(".errornote")
            assert not page.is_visible("#user-tools")
            time.sleep(2.5)  # django-otp holds the next try back after a wrong code
            # The enrolment used this 30 seconds' code; the next one is accepted too.
            sign_in(page, "root", root, code=_totp(key, 1))
            page.wait_for_selector("#user-tools")
            assert page.url == cp.admin_url

            # (c) lockout after five wrong passwords; axes_reset lifts it.
            page = browser.new_context().new_page()
            for _ in range(4):
                sign_in(page, "carol", "not her password")
                assert "enter the correct username and password" in page.inner_text(".errornote")
            sign_in(page, "carol", "not her password")
            assert "Too many failed sign-ins" in page.inner_text("#locked-out")
            sign_in_page = page.goto(cp.admin_url)
            assert sign_in_page is not None
            page.fill("#id_username", "carol")
            page.fill("#id_password", carol_password)
            with page.expect_response(cp.admin_url + "login/?next=/admin/") as answer:
                page.click("input[type=submit]")
            assert answer.value.status == 429
            assert page.is_visible("#locked-out")

            cp.manage("axes_reset")
            sign_in(page, "carol", carol_password)
            page.wait_for_selector("#user-tools")
            assert page.text_content("#user-tools strong") == "carol"
        except Exception:
            # What the browser last saw and what the servers said, for a failure in CI.
            for context in browser.contexts:
                for open_page in context.pages:
                    print("page", open_page.url, open_page.title())
            print("control plane:", *(p.tail(30) for p in cp.processes))
            raise
