"""Knowledge-base use cases on the management listener: ingest, list, describe, delete.

An operator loads a client's files through the control plane (the admin, its REST API or
``sanctum kb ingest``), which sends them here as signed management requests. Each file is
parsed here (the control plane sends bytes and names, nothing else), then
chunked, embedded and written to the client's collection. A file whose content and
chunking are unchanged is left as it is; a changed one has its chunks replaced. A file
that cannot be used is skipped with its reason while the rest of the request ingests.
Logs carry ids and counts: neither file names nor their content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from data_plane.errors import Conflict, NotFound, Unavailable
from data_plane.fair_queue import NODE_WORK
from data_plane.rag import Retrieval
from data_plane.rag.chunking import Chunk
from data_plane.rag.parsing import FILE_TYPES, DocumentRejected
from data_plane.rag.store import DocumentRecord, KnowledgeBaseInfo, document_id
from data_plane.runtime import Runtime

logger = logging.getLogger(__name__)

Status = Literal["ingested", "unchanged", "skipped"]


@dataclass(frozen=True)
class IngestFile:
    name: str
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """What happened to one file of an ingest request."""

    name: str
    status: Status
    chunks: int = 0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "chunks": self.chunks}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class _Pending:
    index: int
    file: IngestFile
    sha256: str
    chunks: list[Chunk]


class KnowledgeBaseService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.retrieval
        # One ingestion at a time: it is CPU-bound, and two writers of one document
        # would race on its chunk ids.
        self._writing = asyncio.Lock()

    @property
    def retrieval(self) -> Retrieval:
        if self.runtime.retrieval is None:
            raise Unavailable("retrieval is not enabled on this node", code="retrieval_disabled")
        return self.runtime.retrieval

    def limits(self) -> dict[str, Any]:
        """What an ingest request may carry (the CLI checks files against it first)."""
        return {
            "file_types": list(FILE_TYPES),
            "max_document_bytes": self.settings.max_document_bytes,
            "max_request_bytes": self.runtime.settings.max_management_body_bytes,
            "chunk_tokens": self.settings.chunk_tokens,
            "chunk_overlap_tokens": self.settings.chunk_overlap_tokens,
            "embedding_model": self.settings.embedding_model,
        }

    async def ingest(
        self, client_id: str, knowledge_base: str, files: list[IngestFile]
    ) -> list[Outcome]:
        """Load ``files`` into ``client_id``'s knowledge base ``knowledge_base``; only for
        a client placed on this node's pool (409 otherwise: its data has no place here)."""
        if not self.runtime.config.places(client_id):
            raise Conflict(
                f"client {client_id} is not placed on this node's pool",
                param="client_id",
                code="client_not_placed",
            )
        retrieval = self.retrieval
        started = time.monotonic()
        outcomes: dict[int, Outcome] = {}
        async with self._writing:
            pending: list[_Pending] = []
            seen: set[str] = set()
            for index, file in enumerate(files):
                if file.name in seen:
                    outcomes[index] = Outcome(file.name, "skipped", reason="duplicate name")
                    continue
                seen.add(file.name)
                prepared = await self._prepare(retrieval, client_id, knowledge_base, file)
                if isinstance(prepared, Outcome):
                    outcomes[index] = prepared
                else:
                    pending.append(_Pending(index, file, *prepared))
            texts = [c.text for p in pending for c in p.chunks]
            vectors = await retrieval.embedder.embed(
                texts, tokens=[c.tokens for p in pending for c in p.chunks]
            )
            at = 0
            now = datetime.now(UTC).isoformat()
            for p in pending:
                record = DocumentRecord(
                    client_id=client_id,
                    knowledge_base=knowledge_base,
                    document=p.file.name,
                    document_id=document_id(client_id, knowledge_base, p.file.name),
                    sha256=p.sha256,
                    chunker=retrieval.chunker.signature,
                    chunks=len(p.chunks),
                    bytes=len(p.file.data),
                    updated_at=now,
                )
                await retrieval.store.put_document(
                    record, p.chunks, vectors[at : at + len(p.chunks)]
                )
                at += len(p.chunks)
                outcomes[p.index] = Outcome(p.file.name, "ingested", chunks=len(p.chunks))
        result = [outcomes[i] for i in range(len(files))]
        logger.info(
            "ingest client=%s knowledge_base=%s files=%d ingested=%d unchanged=%d skipped=%d "
            "chunks=%d seconds=%.2f",
            client_id,
            knowledge_base,
            len(files),
            sum(o.status == "ingested" for o in result),
            sum(o.status == "unchanged" for o in result),
            sum(o.status == "skipped" for o in result),
            len(texts),
            time.monotonic() - started,
        )
        return result

    async def _prepare(
        self, retrieval: Retrieval, client_id: str, knowledge_base: str, file: IngestFile
    ) -> Outcome | tuple[str, list[Chunk]]:
        """An outcome for a file that needs no writing, or its hash and chunks."""
        limit = self.settings.max_document_bytes
        if len(file.data) > limit:
            return Outcome(
                file.name,
                "skipped",
                reason=f"too large ({len(file.data)} bytes; at most {limit})",
            )
        try:
            text = await retrieval.ingest_parser.parse(
                file.name,
                file.data,
                client=NODE_WORK,
                timeout=self.settings.ingest_parse_timeout_seconds,
                max_text_bytes=4 * limit,  # a PDF's text can outgrow its compressed file
            )
        except DocumentRejected as exc:
            return Outcome(file.name, "skipped", reason=exc.reason)
        digest = hashlib.sha256(file.data).hexdigest()
        held = await retrieval.store.document(client_id, knowledge_base, file.name)
        if held and held.sha256 == digest and held.chunker == retrieval.chunker.signature:
            return Outcome(file.name, "unchanged", chunks=held.chunks)
        chunks = await retrieval.embedder.run(retrieval.chunker.split, text)
        if not chunks:
            return Outcome(file.name, "skipped", reason="no text in this file")
        return digest, chunks

    async def knowledge_bases(self, client_id: str | None = None) -> list[KnowledgeBaseInfo]:
        return await self.retrieval.store.knowledge_bases(client_id)

    async def documents(self, client_id: str, knowledge_base: str) -> list[DocumentRecord]:
        records = await self.retrieval.store.documents(client_id, knowledge_base)
        if not records:
            raise _missing(client_id, knowledge_base)
        return records

    async def delete(self, client_id: str, knowledge_base: str) -> list[DocumentRecord]:
        async with self._writing:
            records = await self.retrieval.store.delete_knowledge_base(client_id, knowledge_base)
        if not records:
            raise _missing(client_id, knowledge_base)
        logger.info(
            "knowledge base deleted client=%s knowledge_base=%s documents=%d",
            client_id,
            knowledge_base,
            len(records),
        )
        return records

    async def delete_document(
        self, client_id: str, knowledge_base: str, name: str
    ) -> DocumentRecord:
        async with self._writing:
            record = await self.retrieval.store.delete_document(client_id, knowledge_base, name)
        if record is None:
            raise NotFound(
                "no such document in that knowledge base",
                param="name",
            )
        logger.info(
            "document deleted client=%s knowledge_base=%s chunks=%d",
            client_id,
            knowledge_base,
            record.chunks,
        )
        return record


def _missing(client_id: str, knowledge_base: str) -> NotFound:
    return NotFound(
        "that client has no such knowledge base",
        code="knowledge_base_not_found",
    )
