"""The knowledge-base index: Qdrant through ``qdrant-client``, local mode or a server.

Local mode keeps the index on disk under the node's data directory (an operator-loaded
knowledge base is the one thing of a client's that may live on disk); a server URL is
the scale-out option. The client API is the same either way, so is this code.

Namespace design: one collection per (client, knowledge base), named from a hash of
both, ``PREFIX_kb_<sha256(client, kb)>``. The client half comes only from the caller's
authenticated identity (a ClientSpec on the client API, the signed request's path on
the management listener), never from a collection name a request could carry, so one
client's collections are out of reach of another's searches whatever the request names.
Each point also records its owner, checked on every hit as a second line of defence.
A catalog collection (``PREFIX_catalog``, payload only in effect) holds one record per
document: its name, content hash, chunking and chunk count.

Every call into Qdrant runs on one worker thread of the store's own: off the event loop,
and serial (local mode is plain Python over SQLite files, not made for threads).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from data_plane.rag.chunking import Chunk

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Fixed: ids derived from it are stable across nodes and restarts.
ID_NAMESPACE = uuid.UUID("6f1c5a2e-3d0b-4c7e-9a51-5a6e7c7d0b11")
UPSERT_BATCH = 256


def document_id(client_id: str, knowledge_base: str, document: str) -> str:
    """A document's stable id: the same name in the same knowledge base, the same id."""
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([client_id, knowledge_base, document])))


def chunk_id(doc_id: str, index: int) -> str:
    """A chunk's stable id (its point id in Qdrant)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{doc_id}/{index}"))


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, from a knowledge base or from a session's documents."""

    source: Literal["knowledge_base", "session"]
    source_name: str  # the knowledge base's name or the session's id
    document: str
    chunk: int
    chunk_id: str
    score: float
    text: str

    def as_source(self) -> dict[str, Any]:
        return {
            self.source: self.source_name,
            "document": self.document,
            "chunk": self.chunk,
            "chunk_id": self.chunk_id,
            "score": round(self.score, 4),
            "text": self.text,
        }


@dataclass(frozen=True)
class DocumentRecord:
    """The catalog's record of one document in a knowledge base (no content)."""

    client_id: str
    knowledge_base: str
    document: str
    document_id: str
    sha256: str
    chunker: str
    chunks: int
    bytes: int
    updated_at: str

    @classmethod
    def of(cls, payload: dict[str, Any]) -> DocumentRecord:
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class KnowledgeBaseInfo:
    client_id: str
    name: str
    documents: int
    chunks: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "client": self.client_id,
            "name": self.name,
            "documents": self.documents,
            "chunks": self.chunks,
        }


class KnowledgeBaseStore:
    """Knowledge bases in Qdrant (see the module's docstring)."""

    def __init__(
        self,
        *,
        path: Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        prefix: str = "sanctum",
    ) -> None:
        if (path is None) == (url is None):
            raise ValueError("give a local path or a server url")
        self._path = path
        self._url = url
        self._api_key = api_key
        self.prefix = prefix
        self.catalog = f"{prefix}_catalog"
        self.dimensions = 0
        self._client: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant")

    @property
    def local(self) -> bool:
        return self._url is None

    def collection_name(self, client_id: str, knowledge_base: str) -> str:
        digest = hashlib.sha256(json.dumps([client_id, knowledge_base]).encode()).hexdigest()
        return f"{self.prefix}_kb_{digest[:40]}"

    # --- lifecycle -----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def start_sync(self, dimensions: int) -> None:
        from qdrant_client import QdrantClient, models

        self.dimensions = dimensions
        if self._path is not None:
            self._path.mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=str(self._path))
        else:
            self._client = QdrantClient(url=self._url, api_key=self._api_key)
        if not self._client.collection_exists(self.catalog):
            # Payload is all it holds; a one-number vector keeps it a plain collection on
            # every Qdrant version, local or server.
            self._client.create_collection(
                self.catalog,
                vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
            )
        for collection in self._client.get_collections().collections:
            self._tune(collection.name)

    async def start(self, dimensions: int) -> None:
        await self._run(self.start_sync, dimensions)

    def close_sync(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def close(self) -> None:
        await self._run(self.close_sync)
        self._pool.shutdown(wait=True)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("the knowledge-base store is not started")
        return self._client

    def _tune(self, collection: str) -> None:
        """Local mode commits every point on its own; without this, each commit waits
        for the disk (about 20 ms a point here). WAL with synchronous=NORMAL keeps the
        file consistent through a crash and may lose only the last writes on power
        loss, which re-ingesting restores."""
        if not self.local:
            return
        local = getattr(self._client, "_client", None)
        store = getattr(getattr(local, "collections", {}).get(collection), "storage", None)
        conn = getattr(store, "storage", None)
        if isinstance(conn, sqlite3.Connection):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

    # --- catalog -------------------------------------------------------------------------

    def _records(self, **match: str) -> list[DocumentRecord]:
        from qdrant_client import models

        conditions: list[Any] = [
            models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in match.items()
        ]
        records: list[DocumentRecord] = []
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.catalog,
                scroll_filter=models.Filter(must=conditions) if conditions else None,
                limit=1000,
                offset=offset,
                with_payload=True,
            )
            records += [DocumentRecord.of(p.payload or {}) for p in points]
            if offset is None:
                break
        return sorted(records, key=lambda r: (r.client_id, r.knowledge_base, r.document))

    async def documents(self, client_id: str, knowledge_base: str) -> list[DocumentRecord]:
        return await self._run(
            lambda: self._records(client_id=client_id, knowledge_base=knowledge_base)
        )

    def _document(self, client_id: str, knowledge_base: str, name: str) -> DocumentRecord | None:
        found = self.client.retrieve(
            self.catalog, ids=[document_id(client_id, knowledge_base, name)], with_payload=True
        )
        return DocumentRecord.of(found[0].payload or {}) if found else None

    async def document(
        self, client_id: str, knowledge_base: str, name: str
    ) -> DocumentRecord | None:
        return await self._run(self._document, client_id, knowledge_base, name)

    def _knowledge_bases(self, client_id: str | None) -> list[KnowledgeBaseInfo]:
        totals: dict[tuple[str, str], list[int]] = {}
        for r in self._records(**({"client_id": client_id} if client_id else {})):
            entry = totals.setdefault((r.client_id, r.knowledge_base), [0, 0])
            entry[0] += 1
            entry[1] += r.chunks
        return [
            KnowledgeBaseInfo(client_id=c, name=k, documents=d, chunks=n)
            for (c, k), (d, n) in sorted(totals.items())
        ]

    async def knowledge_bases(self, client_id: str | None = None) -> list[KnowledgeBaseInfo]:
        """Every knowledge base on this index (or one client's), with its counts."""
        return await self._run(self._knowledge_bases, client_id)

    def _exists(self, client_id: str, knowledge_base: str) -> bool:
        return bool(self.client.collection_exists(self.collection_name(client_id, knowledge_base)))

    async def exists(self, client_id: str, knowledge_base: str) -> bool:
        return await self._run(self._exists, client_id, knowledge_base)

    # --- writes --------------------------------------------------------------------------

    def _put_record(self, record: DocumentRecord) -> None:
        from qdrant_client import models

        self.client.upsert(
            self.catalog,
            points=[
                models.PointStruct(id=record.document_id, vector=[1.0], payload=asdict(record))
            ],
        )

    def _put_document(self, record: DocumentRecord, chunks: list[Chunk], vectors: Any) -> None:
        from qdrant_client import models

        name = self.collection_name(record.client_id, record.knowledge_base)
        if not self.client.collection_exists(name):
            self.client.create_collection(
                name,
                # The embedder's vectors are normalised: a dot product is their cosine,
                # without local mode re-normalising every stored vector on each query.
                vectors_config=models.VectorParams(
                    size=self.dimensions, distance=models.Distance.DOT
                ),
            )
            self._tune(name)
            if not self.local:
                for key in ("client_id", "document_id"):
                    self.client.create_payload_index(
                        name, key, field_schema=models.PayloadSchemaType.KEYWORD
                    )
        old = self._document(record.client_id, record.knowledge_base, record.document)
        old_chunks = old.chunks if old else 0
        # Recorded first with the larger count: if this write dies half way, the next
        # one still knows every chunk id it may have left behind.
        if old_chunks > len(chunks):
            self._put_record(_replace(record, chunks=old_chunks))
        base = {
            "client_id": record.client_id,
            "knowledge_base": record.knowledge_base,
            "document": record.document,
            "document_id": record.document_id,
        }
        for start in range(0, len(chunks), UPSERT_BATCH):
            batch = chunks[start : start + UPSERT_BATCH]
            self.client.upsert(
                name,
                points=[
                    models.PointStruct(
                        id=chunk_id(record.document_id, c.index),
                        vector=np.asarray(vectors[start + i], dtype=np.float32).tolist(),
                        payload={**base, "chunk": c.index, "text": c.text},
                    )
                    for i, c in enumerate(batch)
                ],
            )
        stale = [chunk_id(record.document_id, i) for i in range(len(chunks), old_chunks)]
        if stale:
            self.client.delete(name, points_selector=_point_ids(stale))
        self._put_record(record)

    async def put_document(self, record: DocumentRecord, chunks: list[Chunk], vectors: Any) -> None:
        """Write a document's chunks (replacing what it had) and its catalog record."""
        await self._run(self._put_document, record, chunks, vectors)

    def _delete_document(
        self, client_id: str, knowledge_base: str, name: str
    ) -> DocumentRecord | None:

        record = self._document(client_id, knowledge_base, name)
        if record is None:
            return None
        collection = self.collection_name(client_id, knowledge_base)
        ids = [chunk_id(record.document_id, i) for i in range(record.chunks)]
        if ids and self.client.collection_exists(collection):
            self.client.delete(collection, points_selector=_point_ids(ids))
        self.client.delete(self.catalog, points_selector=_point_ids([record.document_id]))
        if not self._records(client_id=client_id, knowledge_base=knowledge_base):
            self.client.delete_collection(collection)
        return record

    async def delete_document(
        self, client_id: str, knowledge_base: str, name: str
    ) -> DocumentRecord | None:
        """Remove one document; the knowledge base goes with its last document."""
        return await self._run(self._delete_document, client_id, knowledge_base, name)

    def _delete_knowledge_base(self, client_id: str, knowledge_base: str) -> list[DocumentRecord]:

        records = self._records(client_id=client_id, knowledge_base=knowledge_base)
        collection = self.collection_name(client_id, knowledge_base)
        if self.client.collection_exists(collection):
            self.client.delete_collection(collection)
        if records:
            self.client.delete(
                self.catalog,
                points_selector=_point_ids([r.document_id for r in records]),
            )
        return records

    async def delete_knowledge_base(
        self, client_id: str, knowledge_base: str
    ) -> list[DocumentRecord]:
        """Drop a knowledge base: its collection and its catalog records."""
        return await self._run(self._delete_knowledge_base, client_id, knowledge_base)

    # --- search --------------------------------------------------------------------------

    def _search(self, client_id: str, knowledge_bases: list[str], vector: Any, k: int) -> list[Hit]:
        from qdrant_client import models

        query = np.asarray(vector, dtype=np.float32).tolist()
        hits: list[Hit] = []
        for kb in knowledge_bases:
            name = self.collection_name(client_id, kb)
            if not self.client.collection_exists(name):
                continue
            owner = None
            if not self.local:  # indexed on a server; in local mode a Python scan per point
                owner = models.Filter(
                    must=[
                        models.FieldCondition(
                            key="client_id", match=models.MatchValue(value=client_id)
                        )
                    ]
                )
            points = self.client.query_points(
                name, query=query, limit=k, query_filter=owner, with_payload=True
            ).points
            for p in points:
                payload = p.payload or {}
                if payload.get("client_id") != client_id or payload.get("knowledge_base") != kb:
                    logger.error("foreign point in a collection collection=%s", name)
                    continue
                hits.append(
                    Hit(
                        source="knowledge_base",
                        source_name=kb,
                        document=str(payload.get("document", "")),
                        chunk=int(payload.get("chunk", 0)),
                        chunk_id=str(p.id),
                        score=float(p.score),
                        text=str(payload.get("text", "")),
                    )
                )
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    async def search(
        self, client_id: str, knowledge_bases: list[str], vector: Any, k: int
    ) -> list[Hit]:
        """The ``k`` best chunks over ``client_id``'s knowledge bases named here."""
        return await self._run(self._search, client_id, knowledge_bases, vector, k)


def _point_ids(ids: list[str]) -> Any:
    from qdrant_client import models

    return models.PointIdsList(points=list[Any](ids))


def _replace(record: DocumentRecord, **changes: Any) -> DocumentRecord:
    return DocumentRecord(**{**asdict(record), **changes})
