"""Retrieval components: the embedder, the chunker, the knowledge-base index, the parser.

Each component owns one heavy resource and is built once, in the runtime's start
(:class:`Retrieval`). The use cases that combine them live in ``data_plane.services``.
"""

from __future__ import annotations

import logging
import time

from data_plane.rag.chunking import Chunker
from data_plane.rag.embedder import Embedder
from data_plane.rag.parser_process import DocumentParser
from data_plane.rag.store import KnowledgeBaseStore
from data_plane.settings import Settings

logger = logging.getLogger(__name__)


class Retrieval:
    """The node's retrieval components, with a start and a stop."""

    def __init__(self, settings: Settings) -> None:
        rs = settings.retrieval
        self.settings = rs
        self.embedder = Embedder(
            name=rs.embedding_model,
            path=rs.embedder_path,
            threads=rs.embedder_threads,
            query_threads=rs.embedder_query_threads,
            batch_size=rs.embed_batch_size,
            batch_tokens=rs.embed_batch_tokens,
            max_queued_per_client=rs.embedder_queue_per_client,
            max_queued=rs.embedder_queue,
            nice=rs.embedder_nice,
        )
        # Two parsers: a client's session document never waits behind an operator's
        # knowledge-base file (whose time limit is twelve times longer).
        self.parser = DocumentParser(
            memory_bytes=rs.parser_memory_bytes, max_pages=rs.max_pdf_pages
        )
        self.ingest_parser = DocumentParser(
            memory_bytes=rs.parser_memory_bytes, max_pages=rs.max_pdf_pages
        )
        self.store = KnowledgeBaseStore(
            path=settings.qdrant_path,
            url=rs.qdrant_url,
            api_key=rs.qdrant_api_key.get_secret_value() if rs.qdrant_api_key else None,
            prefix=rs.collection_prefix,
        )
        self._chunker: Chunker | None = None

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            raise RuntimeError("retrieval is not started")
        return self._chunker

    async def start(self) -> None:
        started = time.monotonic()
        await self.embedder.load()
        if self.settings.chunk_tokens > self.embedder.max_tokens:
            raise ValueError(
                f"chunk_tokens {self.settings.chunk_tokens} exceeds what the embedder reads "
                f"({self.embedder.max_tokens} tokens)"
            )
        self._chunker = Chunker(
            self.embedder.tokenizer,
            chunk_tokens=self.settings.chunk_tokens,
            overlap_tokens=self.settings.chunk_overlap_tokens,
            tokenizer_name=self.embedder.name,
        )
        await self.store.start(self.embedder.dimensions)
        await self.parser.start()
        logger.info(
            "retrieval ready model=%s dimensions=%d qdrant=%s seconds=%.2f",
            self.embedder.name,
            self.embedder.dimensions,
            "server" if self.settings.qdrant_url else "local",
            time.monotonic() - started,
        )

    async def stop(self) -> None:
        await self.store.close()
        self.embedder.close()
        self.parser.close()
        self.ingest_parser.close()  # its child starts with the first ingestion


__all__ = ["Chunker", "DocumentParser", "Embedder", "KnowledgeBaseStore", "Retrieval"]
