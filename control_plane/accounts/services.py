"""Operator use cases: keep the role groups in step, create operators, issue API tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction
from rest_framework.authtoken.models import Token

from control_plane.accounts.choices import Role
from control_plane.accounts.roles import permissions_for


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
    user: AbstractUser
    # Set only when this call chose a new password; never stored in clear.
    password: str | None = field(default=None, repr=False)


def create_operator(
    username: str,
    role: str,
    *,
    password: str | None = None,
    reset_password: bool = False,
    email: str = "",
) -> OperatorCredentials:
    """Create (or update) a staff user in exactly one role group.

    A new user gets ``password`` or a generated one; an existing user keeps theirs unless
    ``reset_password`` (or an explicit ``password``) says otherwise. The returned
    ``password`` is set only when this call chose it.
    """
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(Role.values)}")
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
    return OperatorCredentials(user=user, password=chosen)


def issue_api_token(user: AbstractUser, *, rotate: bool = False) -> str:
    """The user's REST API token (``Authorization: Token ...``); ``rotate`` replaces it."""
    with transaction.atomic():
        if rotate:
            Token.objects.filter(user=user).delete()
        token, _ = Token.objects.get_or_create(user=user)
    return token.key
