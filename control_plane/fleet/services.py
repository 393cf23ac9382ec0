"""Fleet use cases that are not a plain model save: registering a node from a shell."""

from __future__ import annotations

from django.db import transaction

from control_plane.fleet.models import Node, NodePool, default_pool_id


def register_node(
    *,
    name: str,
    management_url: str,
    public_key: str,
    pool: str | None = None,
    description: str = "",
) -> tuple[Node, bool]:
    """Register node ``name`` (or update its URL, key, pool and description) in one
    transaction; ``(node, created)``. Validated as the admin and the API validate it
    (``ValidationError`` names the field). The change rolls out by itself when it commits
    (``SANCTUM_CP_ROLLOUT__ON_CHANGE``), like any other."""
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(name=name).first()
        created = node is None
        if node is None:
            node = Node(name=name)
        node.management_url = management_url
        node.public_key = public_key
        node.description = description or node.description
        if pool is not None:
            node.pool = NodePool.objects.get(name=pool)
        elif created:
            node.pool_id = default_pool_id()
        node.full_clean()
        node.save()
    return node, created
