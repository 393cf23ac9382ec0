from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "control_plane.audit"
    label = "audit"
    verbose_name = "Audit"
    # Roles (see control_plane.accounts.roles): both read; nobody adds, changes or deletes
    # a receipt or a tree head (collection writes them, and only appends).
    sanctum_roles = {"admin": ("view",), "auditor": ("view",)}

    def ready(self) -> None:
        from django.core import checks

        from control_plane.audit.backends import check_backend_order
        from control_plane.audit.metrics import LedgerCollector
        from control_plane.core.metrics import register_collector

        checks.register(check_backend_order, checks.Tags.security)
        register_collector(LedgerCollector())
