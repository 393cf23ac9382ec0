from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "control_plane.accounts"
    label = "accounts"
    verbose_name = "Operators"

    def ready(self) -> None:
        from control_plane.accounts.signals import sync_roles_after_migrate

        # Every app's post_migrate, not just ours: permissions of apps listed after this
        # one are created by their own post_migrate, and the roles must include them.
        post_migrate.connect(sync_roles_after_migrate, dispatch_uid="sanctum-sync-roles")
