"""Which clients an operator may audit: the one place every auditor-facing read asks.

The auditors' page, the API (receipts, bundles), the admin's receipt list and the usage
charts all take an :class:`AuditScope` from :func:`audit_scope` and let it filter or
refuse; none of them reads ``AuditorScope`` itself.

- An operator with an ``AuditorScope`` (``control_plane.accounts``) sees only the clients
  it lists, and none when it lists none. Asking for another client is refused
  (:class:`ClientOutOfScope`, 403) whether that client exists or not, so a scoped
  auditor can't learn which other clients there are.
- Everyone else who may read receipts (the admin role, the operator's own auditors) sees
  every client. A superuser is never scoped: Django grants it everything anyway.

Tree heads, consistency proofs and the log key are global (a bundle is checked against
them) and stay visible to every auditor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from django.db.models import QuerySet

_ReceiptsT = TypeVar("_ReceiptsT", bound=QuerySet[Any])

_CACHE = "_sanctum_audit_scope"


class ClientOutOfScope(PermissionError):
    """The operator is scoped to other clients than the one asked for."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"you are not scoped to audit client {client_id[:128]!r}")
        self.client_id = client_id


@dataclass(frozen=True)
class AuditScope:
    """``clients``: the client ids the operator may audit, or ``None`` for every client."""

    clients: frozenset[str] | None = None

    @property
    def scoped(self) -> bool:
        return self.clients is not None

    def allows(self, client_id: str) -> bool:
        return self.clients is None or client_id in self.clients

    def check(self, client_id: str) -> None:
        """Raise :class:`ClientOutOfScope` unless the operator may audit ``client_id``."""
        if not self.allows(client_id):
            raise ClientOutOfScope(client_id)

    def receipts(self, receipts: _ReceiptsT) -> _ReceiptsT:
        """``receipts`` (a queryset of receipts) narrowed to the clients in scope."""
        return receipts if self.clients is None else receipts.filter(client__in=self.clients)

    def known_clients(self) -> list[str]:
        """Clients to offer in a picker: registered ones and any other a receipt names,
        narrowed to the scope."""
        from control_plane.audit.models import Receipt
        from control_plane.clients.models import Client

        registered = set(Client.objects.values_list("slug", flat=True))
        logged = set(self.receipts(Receipt.objects.values_list("client", flat=True).distinct()))
        return sorted(c for c in registered | logged if self.allows(c))


EVERY_CLIENT = AuditScope()


def audit_scope(user: Any) -> AuditScope:
    """The scope of ``user``, looked up once per request (cached on the user object)."""
    cached = getattr(user, _CACHE, None)
    if cached is not None:
        return cached
    scope = EVERY_CLIENT
    if getattr(user, "is_authenticated", False) and not user.is_superuser:
        from control_plane.accounts.models import AuditorScope

        row = AuditorScope.objects.filter(user=user).first()
        if row is not None:
            scope = AuditScope(frozenset(row.clients.values_list("slug", flat=True)))
    setattr(user, _CACHE, scope)
    return scope
