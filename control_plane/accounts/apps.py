from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_migrate


class SanctumAdminConfig(admin_apps.AdminConfig):
    """Django's admin, with the TOTP-aware site as ``admin.site`` (``sites``)."""

    default = False  # listed by its path in INSTALLED_APPS; AccountsConfig is this app's
    default_site = "control_plane.accounts.sites.OperatorAdminSite"


class AccountsConfig(AppConfig):
    default = True
    name = "control_plane.accounts"
    label = "accounts"
    verbose_name = "Operators"
    # Auditor scopes: admins set them. Single sign-on identities: admins see them and
    # may unlink one (by deleting it); their admin refuses adding and changing. Auditors
    # see neither (a scoped one holds no permission outside the audit pages anyway).
    sanctum_roles = {"admin": ("add", "change", "delete", "view")}

    def ready(self) -> None:
        from control_plane.accounts.metrics import SignInCollector
        from control_plane.accounts.signals import sync_roles_after_migrate
        from control_plane.core.metrics import register_collector

        register_collector(SignInCollector())

        # Every app's post_migrate, not just ours: permissions of apps listed after this
        # one are created by their own post_migrate, and the roles must include them.
        post_migrate.connect(sync_roles_after_migrate, dispatch_uid="sanctum-sync-roles")
