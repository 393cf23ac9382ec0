"""The management listener's routes: signed config in, usage records out, health.

Bound to the management address only. Every route takes only a request signed by a
management key the node trusts and meant for this node (``shared.signed_request``);
a config bundle is, besides, signed by a config key. Health is metadata for the
control plane's poller (the knowledge bases' names and counts included), answered as
a JWS signed by the node's key and bound to the request's one-time id, so an answer
can't be forged or replayed. The usage contract is written up in docs/audit.md;
knowledge-base loading is in ``knowledge_bases``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from data_plane.api.deps import ControlPlaneSigned, RetrievalDep, RuntimeDep, SignedClaims
from data_plane.api.routes.attestation import statement_token
from data_plane.config_store import NO_CONFIG, ConfigRejected
from data_plane.engine.base import Engine
from data_plane.errors import BadRequest, Unprocessable
from data_plane.outbox import Placed
from data_plane.runtime import Runtime
from data_plane.services.retrieval import RetrievalService
from shared import management
from shared.attestation import (
    ATTESTATION_PATH,
    ATTESTATION_PLACED_PATH,
    PlacedStatement,
    StatementPlaced,
)
from shared.keys import key_id, public_jwk
from shared.signed_request import sign_answer
from shared.usage import (
    MAX_COUNT,
    MAX_PAGE,
    USAGE_ACK_PATH,
    USAGE_PATH,
    USAGE_PLACED_PATH,
    OutboxItem,
    PlacedItem,
    PlacedPage,
    Placement,
    UsageAck,
    UsageAckResult,
    UsagePage,
    validation_summary,
)

router = APIRouter(prefix="/internal", tags=["management"])


@router.put(management.CONFIG_PATH.removeprefix("/internal"), response_model=None)
async def put_config(
    request: Request, runtime: RuntimeDep, _: SignedClaims
) -> dict[str, Any] | JSONResponse:
    """Apply a signed config bundle (``application/jose``: the compact JWS)."""
    body = await request.body()
    try:
        token = body.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    try:
        if not token:
            raise ConfigRejected(400, management.INVALID_CONFIG, "body must be a compact JWS")
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
            headers={"Retry-After": str(exc.retry_after)} if exc.retry_after else None,
        )
    return {"version": bundle.version, "applied": True}


@router.get(management.HEALTH_PATH.removeprefix("/internal"), response_class=Response)
async def health(runtime: RuntimeDep, retrieval: RetrievalDep, claims: SignedClaims) -> Response:
    """The node's health, signed by its key for this request (``application/jose``)."""
    document = await _health(runtime, retrieval)
    token = sign_answer(
        document,
        runtime.node_key,
        nonce=claims["jti"],
        audience=management.CONTROL_PLANE_AUDIENCE,
    )
    return Response(token, media_type=management.JOSE)


async def _health(runtime: Runtime, retrieval: RetrievalService) -> dict[str, Any]:
    problems = runtime.config.problems()
    knowledge_bases = (
        await runtime.retrieval.store.knowledge_bases() if runtime.retrieval is not None else []
    )
    outbox = runtime.usage.outbox
    public = runtime.node_key.public_key()
    return {
        "status": "ok" if problems in ([], [NO_CONFIG]) else "degraded",
        "node": runtime.settings.node_id,
        **runtime.config.summary(),
        "problems": problems,
        "management_certificate": runtime.tls.certificate_summary(),
        "models": [
            {
                "name": e.info.name,
                "version": e.info.version,
                "sha256": e.info.sha256,
                "context_size": e.info.context_size,
            }
            for e in runtime.serving()
        ],
        # Model files being fetched from the storage link: bytes done of size.
        "model_fetches": runtime.model_files.fetches(),
        # New versions staged to replace served models: "fetching" (its file is on its
        # way from the storage link: progress in model_fetches) or "checking" (hashing
        # it), then "loaded" (ready to switch at once), "ready" (file verified; no room
        # to load it beside the old one, which drains first) or "failed" (with the
        # reason). The control plane lets a staged pin go live once every node of its
        # pools reports it loaded or ready.
        "staged": [s.as_dict() for s in runtime.staged.values()],
        "max_loaded_models": runtime.engines.max_loaded,
        "sessions_open": len(runtime.sessions),
        # Totals only: which clients wait is nobody's business here.
        "engines": [_engine_health(e) for e in runtime.engines.loaded()],
        "queues": {
            "prompt_builder": sum(runtime.prompt_work.waiting().values()),
            "embedder": sum(runtime.retrieval.embedder.waiting().values())
            if runtime.retrieval is not None
            else 0,
            "document_parser": sum(runtime.retrieval.parser.waiting().values())
            + sum(runtime.retrieval.ingest_parser.waiting().values())
            if runtime.retrieval is not None
            else 0,
        },
        "retrieval": runtime.retrieval is not None,
        "knowledge_bases": [kb.as_dict() for kb in knowledge_bases],
        "session_documents": retrieval.session_document_count(),
        "uptime_seconds": int(time.time() - runtime.started_at),
        "node_key": {"kid": key_id(public), "jwk": public_jwk(public)},
        "usage": {
            "pending": outbox.pending_count,
            "last_cursor": outbox.last_cursor,
            "acked_through": outbox.acked_through,
            # The newest signed tree head the control plane handed over: a restored
            # control plane sees here how far its ledger had grown.
            "tree_head": outbox.tree_head,
        },
    }


def _engine_health(engine: Engine) -> dict[str, Any]:
    stats = engine.stats()
    return {
        "name": engine.info.name,
        # A staged version is loaded beside the one that serves: the version tells them apart.
        "version": engine.info.version,
        "slots": stats.slots,
        "slots_busy": stats.slots_busy,
        "running": sum(stats.running.values()),
        "waiting": sum(stats.waiting.values()),
        "parked_bytes": stats.parked_bytes,
        "parked_sequences": stats.parked_sequences,
        "paused": stats.paused,
        "parked_dropped": stats.parked_dropped,
    }


@router.get(USAGE_PATH.removeprefix("/internal"), dependencies=[ControlPlaneSigned])
async def list_usage(
    runtime: RuntimeDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_COUNT, description="read records after this cursor")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> UsagePage:
    """Unacknowledged usage records with a cursor above ``after``, oldest first."""
    records, more = await runtime.usage.outbox.pending_after(after, limit)
    return UsagePage(
        node_id=runtime.settings.node_id,
        records=[
            OutboxItem(cursor=r.cursor, record_id=r.meta.record_id, jws=r.jws) for r in records
        ],
        next=records[-1].cursor if records else after,
        more=more,
        tree_head=runtime.usage.outbox.tree_head,
    )


@router.get(USAGE_PLACED_PATH.removeprefix("/internal"), dependencies=[ControlPlaneSigned])
async def list_placed(
    runtime: RuntimeDep,
    from_index: Annotated[
        int, Query(ge=0, le=MAX_COUNT, description="records logged at this ledger index or later")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> PlacedPage:
    """Acknowledged records still held, with where the control plane logged them, from a
    ledger index on: what a control plane restored from an older backup collects again."""
    outbox = runtime.usage.outbox
    records, more = await outbox.placed_from(from_index, limit)
    return PlacedPage(
        node_id=runtime.settings.node_id,
        records=[
            PlacedItem(
                cursor=r.cursor,
                jws=r.jws,
                placement=Placement(
                    record_id=r.meta.record_id,
                    log_index=r.placed.log_index,
                    logged_at=r.placed.logged_at,
                    leaf_hash=r.placed.leaf_hash,
                ),
            )
            for r in records
        ],
        next=records[-1].placed.log_index + 1 if records else from_index,
        more=more,
        tree_head=outbox.tree_head,
    )


@router.post(USAGE_ACK_PATH.removeprefix("/internal"), dependencies=[ControlPlaneSigned])
async def ack_usage(request: Request, runtime: RuntimeDep) -> UsageAckResult:
    """The control plane has stored these records: the node may drop them (after the
    receipt retention). Acknowledging again, or what the node does not know, is harmless."""
    try:
        ack = UsageAck.model_validate_json(await request.body())
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("body must be a JSON object", code="invalid_json") from None
        raise Unprocessable(validation_summary(exc)) from None
    outbox = runtime.usage.outbox
    placements = {
        p.record_id: Placed(p.log_index, p.logged_at, p.leaf_hash) for p in ack.placements
    }
    result = await outbox.ack(ack.cursor, list(ack.record_ids), placements, ack.tree_head)
    await outbox.compact()
    return UsageAckResult(
        acked_through=result.acked_through,
        pending=result.pending,
        unknown_ids=result.unknown_ids,
    )


@router.get(ATTESTATION_PATH.removeprefix("/internal"), dependencies=[ControlPlaneSigned])
async def get_statement(
    runtime: RuntimeDep, nonce: Annotated[str, Query(max_length=128)]
) -> Response:
    """The node's statement for the control plane's nonce (``application/jose``)."""
    return Response(statement_token(runtime, nonce), media_type=management.JOSE)


@router.post(ATTESTATION_PLACED_PATH.removeprefix("/internal"), dependencies=[ControlPlaneSigned])
async def statement_placed(request: Request, runtime: RuntimeDep) -> PlacedStatement:
    """Where the control plane logged one of this node's statements; the usage records
    signed from now on while its claims hold name that index."""
    try:
        placed = StatementPlaced.model_validate_json(await request.body())
        return runtime.attestor.place(placed)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("body must be a JSON object", code="invalid_json") from None
        raise Unprocessable(validation_summary(exc)) from None
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


@router.get(ATTESTATION_PLACED_PATH.removeprefix("/internal"), dependencies=[ControlPlaneSigned])
async def list_statements_placed(runtime: RuntimeDep) -> list[PlacedStatement]:
    """The logged statements this node keeps, newest first (a restored control plane
    puts them back at their indexes)."""
    return runtime.attestor.placed()
