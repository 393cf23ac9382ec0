"""Receipts: a client fetches the node-signed usage record of one of its ended sessions."""

from __future__ import annotations

from fastapi import APIRouter

from data_plane.api.deps import LimitedClientDep, RuntimeDep
from data_plane.protocol import Receipt

router = APIRouter(prefix="/v1/receipts", tags=["receipts"])


@router.get("/{session_id}")
async def get_receipt(session_id: str, client: LimitedClientDep, runtime: RuntimeDep) -> Receipt:
    """The signed usage record of an ended session of this client (404 for any other).

    The node keeps it until the control plane has stored it, and for the receipt
    retention after that.
    """
    found = await runtime.usage.receipt(client.id, session_id)
    return Receipt(session_id=session_id, record_id=found.meta.record_id, usage_record=found.jws)
