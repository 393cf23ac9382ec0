"""``python -m control_plane sync_roles``: (re)create the admin and auditor groups.

``migrate`` does this too; the command is for after adding an app or editing a role.
"""

from typing import Any

from django.core.management.base import BaseCommand

from control_plane.accounts.services import sync_roles


class Command(BaseCommand):
    help = "Create the admin and auditor groups with exactly their permissions."

    def handle(self, *args: Any, **options: Any) -> None:
        for role, count in sync_roles().items():
            self.stdout.write(f"{role}: {count} permissions")
