"""Which permissions each role holds.

An app declares its share on its AppConfig::

    sanctum_roles = {"admin": ("add", "change", "delete", "view"), "auditor": ("view",)}

Each entry is a codename prefix: ``"view"`` grants ``view_<model>`` for every model of the
app, ``"download"`` would grant a custom ``download_bundle``. Apps that are not ours but
whose permissions the admin role needs (users, groups, tokens) are listed here.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps
from django.contrib.auth.models import Permission
from django.db.models import Q, QuerySet

ALL = ("add", "change", "delete", "view")

THIRD_PARTY_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "auth": {"admin": ALL},
    "knox": {"admin": ALL},
    # An admin removes an operator's lost TOTP device (they enrol again at next sign-in).
    "otp_totp": {"admin": ("view", "delete")},
    # An admin sees failed sign-ins and lifts a lockout by deleting its attempts.
    "axes": {"admin": ("view", "delete")},
}


def declared_roles() -> dict[str, dict[str, tuple[str, ...]]]:
    """``{app_label: {role: codename prefixes}}`` over the installed apps."""
    found: dict[str, dict[str, tuple[str, ...]]] = {}
    for config in apps.get_app_configs():
        declared = getattr(config, "sanctum_roles", None) or THIRD_PARTY_ROLES.get(config.label)
        if declared:
            found[config.label] = dict(declared)
    return found


def permissions_for(role: str, using: str = "default") -> QuerySet[Permission]:
    query = Q(pk__in=[])
    for label, roles in declared_roles().items():
        prefixes: Iterable[str] = roles.get(role, ())
        for prefix in prefixes:
            query |= Q(content_type__app_label=label, codename__startswith=f"{prefix}_")
    return Permission.objects.using(using).filter(query)
