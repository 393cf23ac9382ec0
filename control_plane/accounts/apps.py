from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "control_plane.accounts"
    label = "accounts"
    verbose_name = "Operators"
    # Auditor scopes: admins set them; auditors don't see them (a scoped one holds no
    # permission outside the audit pages anyway).
    sanctum_roles = {"admin": ("add", "change", "delete", "view")}

    def ready(self) -> None:
        from control_plane.accounts.signals import sync_roles_after_migrate

        # Every app's post_migrate, not just ours: permissions of apps listed after this
        # one are created by their own post_migrate, and the roles must include them.
        post_migrate.connect(sync_roles_after_migrate, dispatch_uid="sanctum-sync-roles")
