"""The management listener's routes: signed config in, health out.

Bound to the management address only. A config bundle authenticates itself (its
signature); health is metadata for the control plane's poller.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from data_plane.api.deps import RuntimeDep
from data_plane.config_store import ConfigRejected

router = APIRouter(prefix="/internal", tags=["management"])


@router.put("/config", response_model=None)
async def put_config(request: Request, runtime: RuntimeDep) -> dict[str, Any] | JSONResponse:
    """Apply a signed config bundle (``application/jose``: the compact JWS)."""
    body = await request.body()
    try:
        token = body.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    try:
        if not token:
            raise ConfigRejected(400, "invalid_config", "body must be a compact JWS")
        bundle = await runtime.apply_config(token)
    except ConfigRejected as exc:
        return JSONResponse(
            {
                "error": {
                    "message": exc.message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": exc.code,
                },
                **exc.extra,
            },
            status_code=exc.status,
        )
    return {"version": bundle.version, "applied": True}


@router.get("/health")
async def health(runtime: RuntimeDep) -> dict[str, Any]:
    bundle = runtime.config.current
    return {
        "status": "ok",
        "node": runtime.settings.node_id,
        "config_version": bundle.version if bundle else None,
        "models": [
            {
                "name": e.info.name,
                "version": e.info.version,
                "sha256": e.info.sha256,
                "context_size": e.info.context_size,
            }
            for e in runtime.engines.loaded()
        ],
        "sessions_open": len(runtime.sessions),
        "uptime_seconds": int(time.time() - runtime.started_at),
    }
