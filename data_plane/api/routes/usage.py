"""``GET /v1/usage``: a client's rate limits and quotas on this node, and what is left."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from data_plane.api.deps import ClientDep, RuntimeDep

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage")
async def get_usage(client: ClientDep, runtime: RuntimeDep) -> dict[str, Any]:
    """This node's share of the client's limits, and its counts in the current minute,
    UTC day and month (tokens as the receipts count them: prompt plus completion).
    Reading it takes nothing from the limits."""
    return {
        "object": "usage",
        "client_id": client.id,
        "node": runtime.settings.node_id,
        **runtime.rate_limits.usage(client.id, client.limits),
    }
