"""Single sign-on's claims to roles: who gets which group, and who is refused."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from control_plane.accounts.models import OperatorIdentity
from control_plane.accounts.services import (
    SignInRefused,
    create_operator,
    roles_from_claims,
    sign_in_with_claims,
)
from control_plane.environment import AuthSettings, OidcSettings

GROUPS = {"admin": ["sanctum-admins"], "auditor": ["sanctum-auditors", "compliance"]}
ISSUER = "https://idp.example"


@pytest.mark.parametrize(
    ("claims", "claim", "expected"),
    [
        ({"groups": ["staff", "sanctum-admins"]}, "groups", {"admin"}),
        ({"groups": ["compliance"]}, "groups", {"auditor"}),
        ({"groups": "sanctum-auditors"}, "groups", {"auditor"}),
        ({"groups": ["sanctum-admins", "compliance"]}, "groups", {"admin", "auditor"}),
        ({"groups": ["staff"]}, "groups", set()),
        ({"roles": ["sanctum-admins"]}, "groups", set()),
        ({"roles": ["sanctum-admins"]}, "roles", {"admin"}),
        ({"realm_access": {"roles": ["compliance"]}}, "realm_access.roles", {"auditor"}),
        ({"groups": [{"name": "sanctum-admins"}, 3]}, "groups", set()),
        ({"groups": None}, "groups", set()),
    ],
)
def test_the_roles_claim_maps_to_roles(claims, claim, expected):
    assert roles_from_claims(claims, claim, GROUPS) == expected


def _sign_in(sub="u-1", groups=("sanctum-admins",), **claims):
    return sign_in_with_claims(
        issuer=ISSUER,
        claims={"sub": sub, "groups": list(groups), **claims},
        roles_claim="groups",
        role_groups=GROUPS,
    )


def _roles(user):
    return set(user.groups.values_list("name", flat=True))


@pytest.mark.django_db
def test_a_first_sign_in_creates_a_staff_user_without_a_password():
    user = _sign_in(preferred_username="ada", email="ada@example.com")

    assert user.username == "ada" and user.email == "ada@example.com"
    assert user.is_staff and not user.is_superuser
    assert not user.has_usable_password()
    assert _roles(user) == {"admin"}
    assert OperatorIdentity.objects.get(user=user).subject == "u-1"


@pytest.mark.django_db
def test_groups_follow_the_provider_at_every_sign_in():
    user = _sign_in(preferred_username="ada")
    again = _sign_in(preferred_username="renamed-at-idp", groups=["compliance"])

    assert again.pk == user.pk and again.username == "ada"  # found by subject, not name
    assert _roles(again) == {"auditor"}

    with pytest.raises(SignInRefused, match="no Sanctum role"):
        _sign_in(groups=["staff"])
    user.refresh_from_db()
    assert _roles(user) == set() and not user.is_staff


@pytest.mark.django_db
def test_nobody_is_created_without_a_role():
    with pytest.raises(SignInRefused, match="'groups' claim names none"):
        _sign_in(preferred_username="eve", groups=["staff"])
    assert not get_user_model().objects.filter(username="eve").exists()


@pytest.mark.django_db
def test_a_provider_user_never_takes_over_a_local_account():
    local = create_operator("alice", "admin").user

    with pytest.raises(SignInRefused, match="belongs to another account"):
        _sign_in(preferred_username="alice", email=local.email)
    assert not OperatorIdentity.objects.exists()


@pytest.mark.django_db
def test_a_user_disabled_here_is_refused_even_with_a_role():
    user = _sign_in(preferred_username="ada")
    user.is_active = False
    user.save()

    with pytest.raises(SignInRefused, match="disabled"):
        _sign_in()


def test_oidc_settings_are_all_or_nothing(tmp_path):
    assert not OidcSettings().enabled
    with pytest.raises(ValueError, match="CLIENT_SECRET_FILE is required"):
        OidcSettings(issuer=ISSUER, client_id="sanctum")
    with pytest.raises(ValueError, match="ISSUER is required"):
        OidcSettings(client_id="sanctum", client_secret_file=tmp_path / "nothing")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    endpoints = {
        name: f"{ISSUER}/{name}"
        for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")
    }
    with pytest.raises(ValueError, match="ISSUER is required"):  # ID tokens are checked on it
        OidcSettings(client_id="sanctum", client_secret_file=secret, **endpoints)
    with pytest.raises(ValueError, match="or none"):
        OidcSettings(
            issuer=ISSUER,
            client_id="sanctum",
            client_secret_file=secret,
            token_endpoint=endpoints["token_endpoint"],
        )
    oidc = OidcSettings(
        issuer=ISSUER, client_id="sanctum", client_secret_file=secret, admin_groups="a,b"
    )
    assert oidc.enabled and oidc.client_secret() == "s3cret"
    assert oidc.role_groups == {"admin": ["a", "b"], "auditor": ["sanctum-auditors"]}


def test_mfa_roles_read_from_text():
    assert AuthSettings(mfa_required_for="admin,auditor").mfa_required_for == ["admin", "auditor"]
    assert AuthSettings(mfa_required_for="none").mfa_required_for == []
    with pytest.raises(ValueError):
        AuthSettings(mfa_required_for="root")


@pytest.mark.django_db
def test_admins_manage_devices_lockouts_and_identities_and_auditors_do_not():
    from django.contrib.auth.models import Group

    def codes(role):
        return set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))

    wanted = {"delete_totpdevice", "delete_accessattempt", "view_operatoridentity"}
    assert wanted <= codes("admin")
    assert not wanted & codes("auditor")


@pytest.mark.django_db
def test_a_new_auditor_from_the_provider_sees_no_client_until_an_admin_assigns_some():
    from control_plane.audit.scopes import audit_scope

    auditor = _sign_in(sub="aud-1", groups=("sanctum-auditors",))
    scope = audit_scope(auditor)
    assert scope.scoped and not scope.clients
    admin = _sign_in(sub="adm-1", groups=("sanctum-admins",))
    assert not audit_scope(admin).scoped
