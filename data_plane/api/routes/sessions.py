"""Sessions: open one, continue it with the X-Sanctum-Session header, add documents to
it, tear it down."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from data_plane.api.deps import ClientDep, InferenceDep, LimitedClientDep, RetrievalDep, RuntimeDep
from data_plane.protocol import SessionCreate, SessionDocumentCreate, SessionInfo

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_session(
    body: SessionCreate, client: LimitedClientDep, service: InferenceDep
) -> SessionInfo:
    """Open a session on a model; its id goes in the X-Sanctum-Session header."""
    session = await service.open_session(client, body.model, body.ttl)
    return SessionInfo.of(session)


@router.get("/{session_id}")
async def get_session(session_id: str, client: ClientDep, runtime: RuntimeDep) -> SessionInfo:
    """The session's metadata; reading it does not count as use (it still expires)."""
    return SessionInfo.of(runtime.sessions.get(client.id, session_id))


@router.delete("/{session_id}")
async def delete_session(session_id: str, client: ClientDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Tear the session down (KV cleared, transcript dropped); returns its usage."""
    summary, extra = await runtime.sessions.teardown(client.id, session_id)
    return {"object": "session.usage", **summary.model_dump(mode="json"), **extra}


@router.post("/{session_id}/documents", status_code=status.HTTP_201_CREATED)
async def add_document(
    session_id: str, body: SessionDocumentCreate, client: LimitedClientDep, service: RetrievalDep
) -> dict[str, Any]:
    """Add a document to this session's retrieval (RAM only, dropped at teardown): text,
    or a file that the node parses (in a process of its own, within a time limit).

    Every chat turn of the session then searches it; a document of the same name is
    replaced.
    """
    return await service.add_session_document(
        client, session_id, body.name, text=body.text, content=body.content
    )
