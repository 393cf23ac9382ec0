"""``GET /v1/attestation?nonce=N``: the node's signed statement of what it runs.

The answer is ``application/jose``, the compact JWS of ``shared.attestation``; a client
checks it with ``sanctum verify --statement`` (docs/audit.md). It lists every model the
node has loaded (names, versions, file hashes), not only the asking client's: the
control plane logs one statement per node, and a statement per client would not match it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from data_plane.api.deps import LimitedClientDep, RuntimeDep
from data_plane.attestation import BadNonce
from data_plane.errors import BadRequest
from shared import management

router = APIRouter(prefix="/v1", tags=["attestation"])


@router.get("/attestation", response_class=Response)
async def get_attestation(
    runtime: RuntimeDep,
    _: LimitedClientDep,
    nonce: Annotated[
        str,
        Query(
            max_length=128,
            description="the asker's nonce: base64url (no padding) of 16 to 64 random bytes",
        ),
    ],
) -> Response:
    """A statement signed by the node's key for this nonce, fresh now."""
    return Response(statement_token(runtime, nonce), media_type=management.JOSE)


def statement_token(runtime: RuntimeDep, nonce: str) -> str:
    """The signed statement for ``nonce`` (400 ``invalid_nonce`` for a malformed one)."""
    try:
        _statement, token = runtime.attestor.statement(nonce)
    except BadNonce:
        raise BadRequest(
            "nonce must be base64url without padding of 16 to 64 bytes",
            param="nonce",
            code="invalid_nonce",
        ) from None
    return token
