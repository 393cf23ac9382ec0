"""Placement: which clients a pool serves, and what its nodes can take.

A node serves the clients and models placed on its pool (``fleet.rollout``); gateways
route a peer to the nodes of its client's pool (``network.rollout``). This module holds
the rules both rely on and the pool's capacity as its nodes' health reports tell it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import transaction

from control_plane.core.choices import HealthStatus
from control_plane.fleet.models import Node, NodePool

if TYPE_CHECKING:
    from control_plane.clients.models import Client


def check_client_placement(pool: NodePool, client: Client) -> None:
    """A dedicated pool serves one client: refuse a second (``ValidationError``)."""
    if not pool.dedicated:
        return
    others = pool.clients.exclude(pk=client.pk) if client.pk else pool.clients.all()
    other = others.order_by("slug").first()
    if other is not None:
        raise ValidationError(
            {"pool": f"Pool {pool.name} is dedicated to client {other.slug}; choose another pool."}
        )


def save_pool(pool: NodePool) -> NodePool:
    """Save ``pool`` under its row lock (placing a client takes the same lock), so it
    can't turn dedicated while a second client is being placed on it."""
    with transaction.atomic():
        if pool.pk:
            NodePool.objects.select_for_update().get(pk=pool.pk)
        pool.clean()
        pool.save()
    return pool


def sharing_with(client: Client) -> list[str]:
    """The other clients whose sessions may run on the same hardware as ``client``'s."""
    # From the pool's clients as loaded (the API prefetches them for a whole page).
    return sorted(c.slug for c in client.pool.clients.all() if c.pk != client.pk)


def node_load(node: Node) -> dict[str, Any]:
    """What a node's last health report says it holds: slots, busy, waiting, sessions."""
    state = node.current_state()
    health = (state.health if state else None) or {}
    engines = [e for e in health.get("engines") or [] if isinstance(e, dict)]

    def total(key: str) -> int:
        return sum(int(e.get(key) or 0) for e in engines)

    return {
        "node": node.name,
        "enabled": node.enabled,
        "draining": node.draining,
        "health": state.health_status if state else None,
        "checked_at": state.health_checked_at.isoformat()
        if state and state.health_checked_at
        else None,
        "slots": total("slots"),
        "slots_busy": total("slots_busy"),
        "waiting": total("waiting"),
        "sessions_open": int(health.get("sessions_open") or 0),
    }


def pool_capacity(pool: NodePool) -> dict[str, Any]:
    """The pool at a glance: its nodes' loads and their sums over the nodes that take new
    sessions (enabled, not draining, healthy at the last poll)."""
    # From the pool's nodes as loaded (the API and the admin prefetch them with their
    # state), sorted here so a prefetched list needs no query of its own.
    nodes = [node_load(n) for n in sorted(pool.nodes.all(), key=lambda n: n.name)]
    serving = [
        n for n in nodes if n["enabled"] and not n["draining"] and n["health"] == HealthStatus.OK
    ]
    slots = sum(n["slots"] for n in serving)
    busy = sum(n["slots_busy"] for n in serving)
    return {
        "nodes": nodes,
        "serving_nodes": len(serving),
        "slots": slots,
        "slots_busy": busy,
        "waiting": sum(n["waiting"] for n in serving),
        "sessions_open": sum(n["sessions_open"] for n in nodes),
        "utilisation": round(busy / slots, 3) if slots else None,
    }
