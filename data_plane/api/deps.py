"""FastAPI dependencies, as ``Annotated`` aliases used by every router."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from data_plane.errors import Unauthorized, Unavailable
from data_plane.request_target import request_target
from data_plane.runtime import Runtime
from data_plane.services.inference import InferenceService
from data_plane.services.knowledge_bases import KnowledgeBaseService
from data_plane.services.retrieval import RetrievalService
from shared import management
from shared.config import ClientSpec
from shared.signed_request import SignedRequestError


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_inference(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.inference
    return service


def get_retrieval(request: Request) -> RetrievalService:
    service: RetrievalService = request.app.state.retrieval
    return service


def get_knowledge_bases(request: Request) -> KnowledgeBaseService:
    service: KnowledgeBaseService = request.app.state.knowledge_bases
    return service


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]
RetrievalDep = Annotated[RetrievalService, Depends(get_retrieval)]
KnowledgeBasesDep = Annotated[KnowledgeBaseService, Depends(get_knowledge_bases)]


def current_client(
    runtime: RuntimeDep,
    authorization: Annotated[str | None, Header()] = None,
) -> ClientSpec:
    """The client whose API key the request carries (401 otherwise)."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    if runtime.config.current is not None and runtime.config.usable() is None:
        # Fail closed: an expired bundle may list keys revoked since it was signed.
        raise Unavailable(
            "this node's config has expired and it serves nobody until the control plane "
            "sends a new one",
            code=management.CONFIG_EXPIRED,
        )
    client_id = runtime.config.authenticate(key.strip(), time.time())
    bundle = runtime.config.usable()
    client = next((c for c in bundle.clients if c.id == client_id), None) if bundle else None
    if client is None:
        raise Unauthorized("invalid, expired or revoked API key")
    return client


ClientDep = Annotated[ClientSpec, Depends(current_client)]


def limited_client(request: Request, runtime: RuntimeDep, client: ClientDep) -> ClientSpec:
    """The calling client, once a request of its per-minute allowance is taken (429 when
    none is left). Routes that start work use this; reads of metadata don't count."""
    runtime.rate_limits.take_request(client.id, client.limits)
    limits = runtime.rate_limits
    request.state.rate_limited = lambda: limits.headers(client.id, client.limits)
    return client


LimitedClientDep = Annotated[ClientSpec, Depends(limited_client)]
SessionHeader = Annotated[
    str | None,
    Header(alias="X-Sanctum-Session", description="continue this session", max_length=128),
]


async def control_plane_signed(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Refuse (401) a management request unless a trusted management key signed it for
    this node; its claims otherwise.

    The signature binds the method, the path with its query string exactly as sent, a
    hash of the body, the audience, a recent time and a one-time id
    (``shared.signed_request``).
    """
    try:
        return runtime.requests.verify(
            request.headers.get("authorization"),
            request.method,
            request_target(request),
            await request.body(),
        )
    except SignedRequestError as exc:
        raise Unauthorized(f"management request refused: {exc}", code="invalid_signature") from None


ControlPlaneSigned = Depends(control_plane_signed)
SignedClaims = Annotated[dict[str, Any], ControlPlaneSigned]
