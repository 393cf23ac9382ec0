"""Lockout after repeated failed sign-ins (django-axes), per user name and address."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from control_plane.accounts.services import create_operator

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"


def _sign_in(client, password, username="alice", **headers):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password, "next": "/admin/"},
        **headers,
    )


def _fail(client, times, **headers):
    return [_sign_in(client, "wrong", **headers).status_code for _ in range(times)]


def test_five_failures_lock_the_name_at_that_address_until_reset(client):
    create_operator("alice", "admin", password=PASSWORD)
    assert settings.AXES_FAILURE_LIMIT == 5

    assert _fail(client, 4) == [200] * 4  # the form again, with its error
    locked = _sign_in(client, "wrong")
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.content.decode()

    right = _sign_in(client, PASSWORD)  # even the right password, now
    assert right.status_code == 429
    assert client.get("/admin/").status_code == 302  # not signed in

    # The same name from another address, and another name from this one, still work.
    assert _sign_in(client, PASSWORD, REMOTE_ADDR="192.0.2.7").status_code == 302
    client.logout()
    create_operator("bob", "auditor", password=PASSWORD)
    assert _sign_in(client, PASSWORD, username="bob").status_code == 302
    client.logout()

    call_command("axes_reset", verbosity=0)
    assert _sign_in(client, PASSWORD).status_code == 302


@override_settings(
    IPWARE_STRICT=False,
    AXES_IPWARE_META_PRECEDENCE_ORDER=["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"],
    AXES_IPWARE_PROXY_COUNT=settings.SANCTUM.model_copy(
        update={"behind_tls_proxy": True, "proxy_count": 1}
    ).forwarded_for_hops,
)
def test_behind_the_proxy_the_address_is_the_one_the_proxy_added(client):
    create_operator("alice", "admin", password=PASSWORD)
    # The client may put anything first; nginx appends the address it saw. (Public
    # addresses: ipware passes over documentation ranges as it would a private one.)
    spoofing = {"HTTP_X_FORWARDED_FOR": "1.1.1.1, 5.6.7.8"}
    _fail(client, 5, **spoofing)

    other_spoof = {"HTTP_X_FORWARDED_FOR": "1.1.1.2, 5.6.7.8"}
    assert _sign_in(client, PASSWORD, **other_spoof).status_code == 429
    another_client = {"HTTP_X_FORWARDED_FOR": "1.1.1.1, 5.6.7.9"}
    assert _sign_in(client, PASSWORD, **another_client).status_code == 302


def test_the_forwarded_address_is_ignored_unless_behind_the_proxy():
    assert settings.SANCTUM.forwarded_for_hops is None
    assert settings.AXES_IPWARE_META_PRECEDENCE_ORDER == ["REMOTE_ADDR"]
    two = settings.SANCTUM.model_copy(update={"behind_tls_proxy": True, "proxy_count": 2})
    assert two.forwarded_for_hops == 1


def test_single_sign_on_callbacks_are_not_counted(client, rf):
    from axes.models import AccessAttempt
    from django.contrib.auth import authenticate

    # What the callback view asks of the backends when the provider's answer is refused.
    for _ in range(6):
        assert authenticate(rf.get("/oidc/callback/"), nonce="n", code_verifier="v") is None
    assert not AccessAttempt.objects.exists()

    _sign_in(client, "wrong")
    assert AccessAttempt.objects.get().failures_since_start == 1
