"""Keep the role groups in step with the permissions after every migrate (and flush)."""

from __future__ import annotations

from typing import Any


def sync_roles_after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    from control_plane.accounts.services import sync_roles

    sync_roles(using=using)
