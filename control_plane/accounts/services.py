"""Operator use cases: keep the role groups in step, create operators, scope auditors to
clients, issue API tokens, sign in through the identity provider, enrol a TOTP device."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from knox.models import AuthToken

from control_plane.accounts.choices import Role
from control_plane.accounts.models import AuditorScope, OperatorIdentity
from control_plane.accounts.roles import permissions_for

if TYPE_CHECKING:
    # AUTH_USER_MODEL: operators are django.contrib.auth users.
    from django.contrib.auth.models import User

    from control_plane.clients.models import Client


def sync_roles(using: str = "default") -> dict[str, int]:
    """Create the ``admin`` and ``auditor`` groups and set exactly their permissions.

    Idempotent; runs after every migrate. Returns the permission count per role.
    """
    counts = {}
    with transaction.atomic(using=using):
        for role in Role:
            group, _ = Group.objects.using(using).get_or_create(name=role.value)
            perms = list(permissions_for(role.value, using=using))
            group.permissions.set(perms)
            counts[role.value] = len(perms)
    return counts


def generate_password() -> str:
    """A password for a new operator: 24 URL-safe characters, shown once."""
    return secrets.token_urlsafe(18)


@dataclass
class OperatorCredentials:
    user: User
    # Set only when this call chose a new password; never stored in clear.
    password: str | None = field(default=None, repr=False)


def create_operator(
    username: str,
    role: str,
    *,
    password: str | None = None,
    reset_password: bool = False,
    email: str = "",
    clients: Sequence[str] | None = None,
    all_clients: bool = False,
) -> OperatorCredentials:
    """Create (or update) a staff user in exactly one role group.

    A new user gets ``password`` or a generated one; an existing user keeps theirs unless
    ``reset_password`` (or an explicit ``password``) says otherwise. The returned
    ``password`` is set only when this call chose it.

    An auditor given ``clients`` (client ids) is scoped to exactly those
    (:func:`scope_auditor`); ``all_clients`` lifts its scope; neither keeps the scope it
    has. An admin is never scoped (an admin's old scope, from when it was an auditor, is
    dropped). Raises ``ValueError`` for an unknown role or client, or clients for an admin.
    """
    from control_plane.clients.models import Client

    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(Role.values)}")
    if role != Role.AUDITOR and (clients is not None or all_clients):
        raise ValueError("only auditors are scoped to clients")
    if clients is not None and all_clients:
        raise ValueError("either clients or all clients, not both")
    scoped_to = None
    if clients is not None:
        wanted = list(dict.fromkeys(clients))
        scoped_to = list(Client.objects.filter(slug__in=wanted).order_by("slug"))
        missing = sorted(set(wanted) - {c.slug for c in scoped_to})
        if missing:
            raise ValueError(f"no client {', '.join(missing)}")
    sync_roles()
    user_model = get_user_model()
    with transaction.atomic():
        user, created = user_model.objects.get_or_create(
            username=username, defaults={"email": email, "is_staff": True}
        )
        chosen = None
        if created or reset_password or password is not None:
            chosen = password or generate_password()
            user.set_password(chosen)
        user.is_staff = True
        user.is_active = True
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        if role == Role.ADMIN or all_clients:
            scope_auditor(user, None)
        elif scoped_to is not None:
            scope_auditor(user, scoped_to)
    return OperatorCredentials(user=user, password=chosen)


def scope_auditor(user: User, clients: Sequence[Client] | None) -> AuditorScope | None:
    """Scope ``user`` to exactly ``clients`` (an empty list: no client at all), or lift its
    scope with ``None`` so it audits every client. Logged in the change trail.

    Raises ``django.core.exceptions.ValidationError`` for an admin or a superuser: only
    auditors are scoped.
    """
    with transaction.atomic():
        scope = AuditorScope.objects.select_for_update().filter(user=user).first()
        if clients is None:
            if scope is not None:
                scope.delete()
            return None
        if scope is None:
            scope = AuditorScope(user=user)
            scope.full_clean(exclude=["clients"])
            scope.save()
        else:
            scope.full_clean(exclude=["clients"])
        scope.clients.set(clients)
    # A user object that already answered a permission check cached its old scope.
    user.__dict__.pop("_sanctum_audit_scope", None)
    return scope


def issue_api_token(user: User, *, rotate: bool = False) -> str:
    """A new REST API token for ``user`` (``Authorization: Token ...``), returned once.

    Only its digest is stored, with an expiry (``SANCTUM_CP_AUTH__TOKEN_TTL_SECONDS``), so
    a token can't be shown again: issue another. ``rotate`` voids the user's others.
    """
    with transaction.atomic():
        if rotate:
            AuthToken.objects.filter(user=user).delete()
        _, token = AuthToken.objects.create(user=user)
    return token


# --- Single sign-on (OpenID Connect) -----------------------------------------------------


class SignInRefused(Exception):
    """The provider vouched for someone this control plane does not let in; the message
    is shown to them (it names the claim and the account, never a token)."""


def claim_values(claims: Mapping[str, Any], path: str) -> set[str]:
    """The strings a claim holds: a list of names, or one name. ``a.b`` reaches into an
    object (Keycloak's ``realm_access.roles``); anything else counts as nothing."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple):
        return {item for item in value if isinstance(item, str)}
    return set()


def roles_from_claims(
    claims: Mapping[str, Any], roles_claim: str, role_groups: Mapping[str, Sequence[str]]
) -> set[str]:
    """The Sanctum roles whose provider groups the roles claim names."""
    held = claim_values(claims, roles_claim)
    return {role for role, groups in role_groups.items() if held & set(groups)}


def _username_from_claims(claims: Mapping[str, Any], username_claim: str) -> str:
    candidate = next(
        (
            value
            for name in (username_claim, "email", "sub")
            if isinstance(value := claims.get(name), str) and value
        ),
        "",
    )
    try:
        UnicodeUsernameValidator()(candidate)
    except ValidationError:
        raise SignInRefused(
            f"the provider's user name {candidate!r} is not a valid operator name"
        ) from None
    if len(candidate) > 150:
        raise SignInRefused("the provider's user name is longer than 150 characters")
    return candidate


def sign_in_with_claims(
    *,
    issuer: str,
    claims: Mapping[str, Any],
    roles_claim: str,
    role_groups: Mapping[str, Sequence[str]],
    username_claim: str = "preferred_username",
    scope_new_auditors: bool = True,
) -> User:
    """The operator the provider's claims describe, created or brought up to date.

    The user is found by (issuer, subject); a first sign-in creates a staff user without
    a usable password, named from ``username_claim``, unless a local account already has
    that name (refused: an IdP user never takes over a local account). The role groups
    are set to exactly what the claims map to, each time, so a role removed at the
    provider is removed here; with no role left the user keeps no group and is refused.
    With ``scope_new_auditors``, a new auditor starts scoped to no client (an admin
    assigns its clients); otherwise it sees every client, as the operator's own.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise SignInRefused("the provider sent no subject (sub) claim")
    roles = roles_from_claims(claims, roles_claim, role_groups)
    user_model = get_user_model()
    with transaction.atomic():
        identity = (
            OperatorIdentity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        if identity is None:
            if not roles:
                raise SignInRefused(_no_role_message(roles_claim))
            username = _username_from_claims(claims, username_claim)
            if user_model.objects.filter(username=username).exists():
                raise SignInRefused(
                    f"the name {username!r} belongs to another account here; ask an admin"
                )
            user = user_model.objects.create_user(username)
            identity = OperatorIdentity.objects.create(user=user, issuer=issuer, subject=subject)
            if Role.AUDITOR in roles and Role.ADMIN not in roles and scope_new_auditors:
                # An empty scope: no client until an admin assigns some.
                AuditorScope.objects.create(user=user)
        user = identity.user
        email = claims.get("email")
        if isinstance(email, str):
            user.email = email
        user.is_staff = bool(roles)
        user.save()
        role_groups_here = Group.objects.filter(name__in=Role.values)
        user.groups.remove(*[g for g in role_groups_here if g.name not in roles])
        user.groups.add(*[g for g in role_groups_here if g.name in roles])
        identity.last_sign_in_at = timezone.now()
        identity.save(update_fields=["last_sign_in_at"])
    # Outside the transaction: the groups just taken away stay taken away.
    if not roles:
        raise SignInRefused(_no_role_message(roles_claim))
    if not user.is_active:
        raise SignInRefused("this account is disabled here; ask an admin")
    return user


def _no_role_message(roles_claim: str) -> str:
    return (
        f"your account at the sign-in provider holds no Sanctum role (its {roles_claim!r} "
        "claim names none of the admin or auditor groups)"
    )


# --- TOTP (local accounts) ---------------------------------------------------------------


def start_totp_enrolment(user: User) -> TOTPDevice:
    """A new unconfirmed TOTP device for ``user``, with a secret made now: one left
    waiting by an earlier session is deleted, so whoever saw its secret then (a session
    signed in with a password alone) does not know the one confirmed now."""
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        return TOTPDevice.objects.create(user=user, name="authenticator app", confirmed=False)


def pending_totp_device(user: User, pk: object) -> TOTPDevice | None:
    """``user``'s unconfirmed device ``pk`` (the one a session was shown), if it is
    still waiting."""
    if not isinstance(pk, int):
        return None
    return TOTPDevice.objects.filter(user=user, pk=pk, confirmed=False).first()


def confirm_totp_enrolment(device: TOTPDevice, token: str) -> bool:
    """Confirm ``device`` with a code from the app; it then replaces any older device.

    False (and nothing changes) when the code is wrong: the device's own throttling
    makes each further wrong code wait longer.
    """
    with transaction.atomic():
        if not device.verify_token(token.strip()):
            return False
        device.confirmed = True
        device.save()
        TOTPDevice.objects.filter(user=device.user).exclude(pk=device.pk).delete()
    return True


# --- Bootstrapping an installation (``sanctum up``) ---------------------------------------


@dataclass
class DemoBootstrap:
    """What :func:`bootstrap_demo` made; ``api_key`` and ``admin_password`` are shown once."""

    admin: OperatorCredentials
    client_slug: str
    model_name: str
    api_key: str = field(repr=False)
    releases: list = field(default_factory=list)
    auditor: OperatorCredentials | None = None
    auditor_token: str = field(default="", repr=False)
    # The admin's REST API token: what `sanctum kb` loads knowledge bases with.
    admin_token: str = field(default="", repr=False)


DEMO_KEY_NAME = "sanctum up demo key"


def bootstrap_demo(
    *,
    admin_username: str = "admin",
    reset_admin_password: bool = True,
    auditor_username: str | None = "auditor",
    client_slug: str = "demo",
    client_name: str = "Demo client",
    embeddings: bool = False,
    knowledge_bases: Sequence[str] = (),
    model_name: str,
    model_version: str,
    model_path: str,
    context_size: int,
    node_name: str | None = None,
    node_url: str | None = None,
    node_public_key: str | None = None,
    rollout: bool = True,
) -> DemoBootstrap:
    """Make an installation usable in one step, idempotently.

    The roles; an admin operator (a new generated password unless told to keep it) with
    an API token (for ``sanctum kb``);
    an auditor operator with an API token (for the demo's bundle download); a demo
    client (given ``knowledge_bases`` added to those it may search); the model pinned
    and its hash verified now (the rollout needs it); this installation's software
    release allowed (the demo's node runs it); the demo client's key, rotated so
    the returned secret is the one that works; the node registered; and a rollout to
    it. Running it again converges on the same state.
    """
    from control_plane.changes.choices import ChangeSource
    from control_plane.changes.services import change_context
    from control_plane.clients.models import ApiKey, Client
    from control_plane.clients.services import issue_api_key, rotate_api_key
    from control_plane.core.rollout import roll_out
    from control_plane.fleet.models import Node
    from control_plane.fleet.rollout import NODES
    from control_plane.knowledge.models import KnowledgeBase
    from control_plane.registry.models import ModelPin
    from control_plane.registry.services import allow_this_release, pin_model, verify_model_pin

    admin = create_operator(admin_username, Role.ADMIN, reset_password=reset_admin_password)
    auditor, auditor_token = None, ""
    if auditor_username:
        auditor = create_operator(
            auditor_username, Role.AUDITOR, reset_password=reset_admin_password
        )
        auditor_token = issue_api_token(auditor.user, rotate=reset_admin_password)
    with change_context(source=ChangeSource.COMMAND, user=admin.user):
        client = Client.objects.filter(slug=client_slug).first()
        if client is None:
            client = Client(slug=client_slug, name=client_name, embeddings=embeddings)
            client.full_clean()
            client.save()
        elif embeddings and not client.embeddings:
            client.embeddings = True
            client.full_clean()
            client.save()
        for name in dict.fromkeys(knowledge_bases):
            # Empty until loaded (sanctum kb ingest); the rollout below lists them.
            if not client.knowledge_bases.filter(name=name).exists():
                knowledge_base = KnowledgeBase(client=client, name=name)
                knowledge_base.full_clean()
                knowledge_base.save()

        pin = ModelPin.objects.filter(name=model_name, version=model_version).first()
        if pin is None:
            pin = pin_model(
                name=model_name,
                version=model_version,
                path=model_path,
                context_size=context_size,
                clients=[client],
                supersede=True,
            )
        elif not pin.enabled:
            for other in ModelPin.objects.filter(name=model_name, enabled=True):
                other.enabled = False
                other.save()
            pin.enabled = True
            pin.save()
        if not pin.clients.filter(pk=client.pk).exists():
            pin.clients.add(client)
        pin = verify_model_pin(pin)
        # The node of a demo runs from this very installation: its release is allowed.
        allow_this_release()

        slot = ApiKey.objects.filter(
            client=client, name=DEMO_KEY_NAME, revoked_at__isnull=True
        ).first()
        issued = (
            rotate_api_key(slot) if slot is not None else issue_api_key(client, name=DEMO_KEY_NAME)
        )

        releases = []
        if node_name:
            node = Node.objects.filter(name=node_name).first() or Node(name=node_name)
            node.management_url = node_url or node.management_url
            node.public_key = node_public_key or node.public_key
            node.enabled = True
            node.full_clean()
            node.save()
            if rollout:
                releases = roll_out(NODES, [node])
    return DemoBootstrap(
        admin=admin,
        client_slug=client.slug,
        model_name=pin.name,
        api_key=issued.secret,
        releases=releases,
        auditor=auditor,
        auditor_token=auditor_token,
        admin_token=issue_api_token(admin.user, rotate=reset_admin_password),
    )
