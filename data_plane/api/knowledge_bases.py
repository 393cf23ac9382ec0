"""Knowledge-base loading on the management listener (the control plane's
``control_plane.knowledge`` sends what operators upload there, or ``sanctum kb``).

Every route needs a request signed by a trusted management key for this node (401
otherwise), checked before the body is parsed. The client a knowledge base belongs to is
named in the path: the control plane's signature is the authority for it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import Base64Bytes, BaseModel, ConfigDict, Field, ValidationError

from data_plane.api.deps import ControlPlaneSigned, KnowledgeBasesDep
from data_plane.protocol import Text
from data_plane.services.knowledge_bases import IngestFile
from shared import management

router = APIRouter(
    prefix=management.KNOWLEDGE_BASES_PATH,
    tags=["knowledge bases"],
    dependencies=[ControlPlaneSigned],
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # shared.config.Name
ClientId = Annotated[str, Path(pattern=NAME_PATTERN)]
KbName = Annotated[str, Path(pattern=NAME_PATTERN)]
DocumentName = Annotated[Text, Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")]


class IngestDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DocumentName
    content: Base64Bytes


class IngestRequest(BaseModel):
    """Files to load: names (relative paths) and their bytes, base64-encoded."""

    model_config = ConfigDict(extra="forbid")

    documents: list[IngestDocument] = Field(min_length=1, max_length=256)


async def _ingest_body(request: Request) -> IngestRequest:
    # Parsed here, after the signature check (a route's own body would be parsed first).
    try:
        return IngestRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ())), "input": None} for e in exc.errors()]
        ) from None


def _record(r: Any) -> dict[str, Any]:
    return {
        "name": r.document,
        "id": r.document_id,
        "chunks": r.chunks,
        "bytes": r.bytes,
        "sha256": r.sha256,
        "updated_at": r.updated_at,
    }


@router.get("")
async def list_knowledge_bases(
    service: KnowledgeBasesDep,
    client: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> dict[str, Any]:
    """Every knowledge base on this node (or one client's), and what an ingest may carry."""
    return {
        "knowledge_bases": [kb.as_dict() for kb in await service.knowledge_bases(client)],
        "ingest": service.limits(),
    }


@router.get("/{client_id}/{knowledge_base}")
async def describe_knowledge_base(
    client_id: ClientId, knowledge_base: KbName, service: KnowledgeBasesDep
) -> dict[str, Any]:
    records = await service.documents(client_id, knowledge_base)
    return {
        "client": client_id,
        "name": knowledge_base,
        "documents": [_record(r) for r in records],
        "chunks": sum(r.chunks for r in records),
    }


@router.post("/{client_id}/{knowledge_base}/documents", status_code=status.HTTP_200_OK)
async def ingest_documents(
    client_id: ClientId,
    knowledge_base: KbName,
    service: KnowledgeBasesDep,
    request: Request,
) -> dict[str, Any]:
    """Load files into the client's knowledge base; each file gets its own outcome."""
    body = await _ingest_body(request)
    outcomes = await service.ingest(
        client_id,
        knowledge_base,
        [IngestFile(name=d.name, data=d.content) for d in body.documents],
    )
    return {
        "client": client_id,
        "knowledge_base": knowledge_base,
        "results": [o.as_dict() for o in outcomes],
    }


@router.delete("/{client_id}/{knowledge_base}")
async def delete_knowledge_base(
    client_id: ClientId, knowledge_base: KbName, service: KnowledgeBasesDep
) -> dict[str, Any]:
    records = await service.delete(client_id, knowledge_base)
    return {
        "client": client_id,
        "name": knowledge_base,
        "deleted": True,
        "documents": len(records),
        "chunks": sum(r.chunks for r in records),
    }


@router.delete("/{client_id}/{knowledge_base}/documents")
async def delete_document(
    client_id: ClientId,
    knowledge_base: KbName,
    service: KnowledgeBasesDep,
    name: Annotated[str, Query(min_length=1, max_length=512)],
) -> dict[str, Any]:
    record = await service.delete_document(client_id, knowledge_base, name)
    return {"client": client_id, "knowledge_base": knowledge_base, "deleted": _record(record)}
