"""Session documents in RAM: searched for their session, dropped when it ends."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from data_plane.engine.base import Sequence
from data_plane.rag.chunking import Chunker
from data_plane.rag.embedder import Embedder
from data_plane.rag.memory import EXTRAS_KEY, SessionDocuments
from data_plane.sessions import SessionStore

pytestmark = pytest.mark.embedder


def add(docs: SessionDocuments, embedder: Embedder, chunker: Chunker, name: str, text: str) -> None:
    chunks = chunker.split(text)
    docs.put(name, chunks, embedder.encode_sync([c.text for c in chunks]))


def test_search_and_replace(embedder: Embedder, chunker: Chunker) -> None:
    docs = SessionDocuments("sess_1", embedder.dimensions)
    add(docs, embedder, chunker, "a.md", "The boat leaves at noon from pier 4.")
    add(docs, embedder, chunker, "b.md", "Invoices are paid within thirty days.")
    q = embedder.encode_sync(["When does the boat leave?"])[0]
    hits = docs.search(q, 5)
    assert [h.document for h in hits] == ["a.md", "b.md"]
    assert hits[0].as_source()["session"] == "sess_1"
    add(docs, embedder, chunker, "a.md", "The boat is cancelled.")
    assert len(docs) == 2 and docs.chunk_count == 2
    assert docs.search(q, 1)[0].text == "The boat is cancelled."


def test_close_drops_everything(embedder: Embedder, chunker: Chunker) -> None:
    docs = SessionDocuments("sess_1", embedder.dimensions)
    add(docs, embedder, chunker, "a.md", "Secret plans for the garden.")
    docs.close()
    assert len(docs) == 0 and docs.chunk_count == 0
    assert docs.search(np.ones(embedder.dimensions, dtype=np.float32), 3) == []
    with pytest.raises(RuntimeError):
        add(docs, embedder, chunker, "b.md", "more")


class _Engine:
    """Stands in for the engine around the session store (the unit under test)."""

    async def open_sequence(self, client: str = "") -> Sequence:
        return Sequence(client=client)

    async def close_sequence(self, seq: Sequence) -> None:
        seq.closed = True


def test_ending_a_session_closes_its_documents(embedder: Embedder, chunker: Chunker) -> None:
    from shared.config import ModelSpec

    spec = ModelSpec(name="m", version="1", sha256="0" * 64, path="/m.gguf", context_size=512)

    async def scenario() -> Any:
        store = SessionStore("node-test")
        session = await store.open(
            client_id="c",
            model=spec,
            engine=_Engine(),  # type: ignore[arg-type]
            ttl_seconds=60,
            max_sessions=2,
        )
        docs = SessionDocuments(session.id, embedder.dimensions)
        add(docs, embedder, chunker, "a.md", "Notes.")
        session.extras[EXTRAS_KEY] = docs
        await store.end(session, "teardown")
        return session, docs

    session, docs = asyncio.run(scenario())
    assert docs.closed and len(docs) == 0
    assert session.extras == {}
