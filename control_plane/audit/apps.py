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
        from control_plane.core.rollout import release_applied
        from control_plane.fleet.models import Node

        checks.register(check_backend_order, checks.Tags.security)
        register_collector(LedgerCollector())
        release_applied.connect(
            _attest_after_apply, sender=Node, dispatch_uid="sanctum-attest-after-apply"
        )


def _attest_after_apply(sender: type, target: object, **kwargs: object) -> None:
    import logging

    from django.db import transaction
    from kombu.exceptions import OperationalError as BrokerError

    from control_plane.audit.tasks import attest_node_statement

    pk = getattr(target, "pk", None)

    def queue() -> None:
        try:
            attest_node_statement.delay(pk)
        except BrokerError as exc:  # the next collection logs it instead
            logging.getLogger(__name__).warning(
                "statement of node %s not queued: %s", pk, type(exc).__name__
            )

    if pk is not None:
        transaction.on_commit(queue)
