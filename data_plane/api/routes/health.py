"""Liveness and readiness on the client listener, for load balancers and orchestrators.

No key needed and nothing about any client in the answer: only whether the process
answers, and whether it serves (a usable signed config and every model it pins loaded).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from data_plane.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process answers."""
    return {"status": "live"}


@router.get("/health/ready", response_model=None)
async def ready(runtime: RuntimeDep) -> dict[str, str] | JSONResponse:
    """200 when the node serves clients; 503 (with ``Retry-After``) and the reason
    (``no_config``, ``config_unusable``, ``models_loading``) when it does not."""
    reason = runtime.not_ready()
    if reason is None:
        return {"status": "ready"}
    return JSONResponse(
        {"status": "not_ready", "reason": reason}, status_code=503, headers={"Retry-After": "5"}
    )
