"""DRF permission classes: Django model permissions, enforced for reads too.

DRF's own ``DjangoModelPermissions`` lets any signed-in user read; here reading needs
``view_<model>``, writing needs add/change/delete, and a view's custom actions (revoke,
roll out...) name what they need in ``action_permissions``. Anonymous requests get 401
(token authentication supplies the challenge), signed-in users without the permission 403.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import DjangoModelPermissions


class ModelPermissions(DjangoModelPermissions):
    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.add_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        action_perms = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if action_perms is not None:
            return user.has_perms(action_perms)
        return super().has_permission(request, view)
