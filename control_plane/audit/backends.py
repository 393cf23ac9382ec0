"""A scoped auditor holds no permission outside the audit pages.

The ``auditor`` role reads everything (clients, keys, peers, the change trail...), which
suits the operator's own auditors. An auditor scoped to some clients
(:mod:`control_plane.audit.scopes`) must not read the other clients' rows there, so it
keeps only :data:`SCOPED_AUDITOR_PERMISSIONS`: the receipts (each read narrowed to its
clients), the tree heads and the node keys (global, and in every bundle anyway).

This backend is Django's ``ModelBackend`` (it stands in for it) that, for a scoped
auditor and any other permission, raises ``PermissionDenied``, which stops Django's walk
over the backends with "no". So it must come before every other backend that grants
permissions (``ModelBackend`` and its subclasses, an SSO backend) in
``AUTHENTICATION_BACKENDS``; a system check (``sanctum.E001``) says so at start-up when
it doesn't. Covering the permission layer covers the admin console, the
REST API and anything else that asks ``user.has_perm``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.checks import CheckMessage, Error
from django.core.exceptions import PermissionDenied
from django.utils.module_loading import import_string

from control_plane.audit.scopes import audit_scope

SCOPED_AUDITOR_PERMISSIONS = frozenset(
    {"audit.view_receipt", "audit.view_treehead", "audit.view_nodekey"}
)
SCOPED_AUDITOR_APPS = frozenset(p.split(".", 1)[0] for p in SCOPED_AUDITOR_PERMISSIONS)
BACKEND = f"{__name__}.ScopedAuditorBackend"


class ScopedAuditorBackend(ModelBackend):
    """Django's own backend (users, passwords, group permissions), except that a scoped
    auditor is refused every permission but :data:`SCOPED_AUDITOR_PERMISSIONS`."""

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        if perm not in SCOPED_AUDITOR_PERMISSIONS and _scoped(user_obj):
            raise PermissionDenied  # stops the walk: no later backend may grant it
        return super().has_perm(user_obj, perm, obj)

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        if app_label not in SCOPED_AUDITOR_APPS and _scoped(user_obj):
            raise PermissionDenied
        return super().has_module_perms(user_obj, app_label)


def _scoped(user: Any) -> bool:
    return bool(user.is_active and user.is_authenticated and audit_scope(user).scoped)


def check_backend_order(**kwargs: Any) -> list[CheckMessage]:
    """``sanctum.E001``: the backend is missing or comes after one that grants."""
    backends = list(settings.AUTHENTICATION_BACKENDS)
    if BACKEND not in backends:
        return [Error(f"{BACKEND} is not in AUTHENTICATION_BACKENDS", id="sanctum.E001")]
    for path in backends[: backends.index(BACKEND)]:
        if callable(getattr(import_string(path), "has_perm", None)):
            return [
                Error(
                    f"{BACKEND} must come before {path} in AUTHENTICATION_BACKENDS, "
                    "or scoped auditors would read every client's rows",
                    id="sanctum.E001",
                )
            ]
    return []
