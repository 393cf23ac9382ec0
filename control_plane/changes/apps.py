from django.apps import AppConfig


class ChangesConfig(AppConfig):
    name = "control_plane.changes"
    label = "changes"
    verbose_name = "Change trail"
    # Roles (see control_plane.accounts.roles): auditors read the trail; nobody edits it.
    sanctum_roles = {"admin": ("view",), "auditor": ("view",)}

    def ready(self) -> None:
        from control_plane.changes import signals  # noqa: F401  (connects the receivers)
