"""The knowledge-base index on real Qdrant local mode: writes, replacement, isolation
between clients, persistence across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_plane.rag.chunking import Chunk, Chunker
from data_plane.rag.embedder import Embedder
from data_plane.rag.store import DocumentRecord, KnowledgeBaseStore, chunk_id, document_id

pytestmark = pytest.mark.embedder


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def store(tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBaseStore]:
    s = KnowledgeBaseStore(path=tmp_path / "qdrant")
    run(s.start(embedder.dimensions))
    yield s
    run(s.close())


def put(
    store: KnowledgeBaseStore,
    embedder: Embedder,
    chunker: Chunker,
    client: str,
    kb: str,
    name: str,
    text: str,
) -> list[Chunk]:
    chunks = chunker.split(text)
    record = DocumentRecord(
        client_id=client,
        knowledge_base=kb,
        document=name,
        document_id=document_id(client, kb, name),
        sha256=str(hash(text)),
        chunker=chunker.signature,
        chunks=len(chunks),
        bytes=len(text),
        updated_at="now",
    )
    run(store.put_document(record, chunks, embedder.encode_sync([c.text for c in chunks])))
    return chunks


def search(
    store: KnowledgeBaseStore, embedder: Embedder, client: str, kbs: list[str], q: str, k: int = 4
):
    return run(store.search(client, kbs, embedder.encode_sync([q])[0], k))


LONG = " ".join(
    f"Room {i} of the archive holds the records of the year {1900 + i}." for i in range(60)
)


def test_ids_are_stable() -> None:
    assert document_id("a", "kb", "x.md") == document_id("a", "kb", "x.md")
    assert document_id("a", "kb", "x.md") != document_id("b", "kb", "x.md")
    assert chunk_id(document_id("a", "kb", "x.md"), 3) == chunk_id(
        document_id("a", "kb", "x.md"), 3
    )


def test_search_finds_the_chunk(store, embedder, chunker) -> None:
    put(store, embedder, chunker, "a", "kb", "pets.md", "Cats like to sleep in the sun.")
    put(store, embedder, chunker, "a", "kb", "tax.md", "Tax returns are due in April.")
    hits = search(store, embedder, "a", ["kb"], "When must I file my taxes?")
    assert [h.document for h in hits] == ["tax.md", "pets.md"]
    assert hits[0].score > hits[1].score
    assert hits[0].source == "knowledge_base" and hits[0].source_name == "kb"
    assert hits[0].text == "Tax returns are due in April."
    assert hits[0].chunk_id == chunk_id(document_id("a", "kb", "tax.md"), 0)


def test_rewriting_a_document_replaces_its_chunks(store, embedder, chunker) -> None:
    first = put(store, embedder, chunker, "a", "kb", "archive.md", LONG)
    assert len(first) > 3
    put(store, embedder, chunker, "a", "kb", "archive.md", "The archive moved to the cellar.")
    [kb] = run(store.knowledge_bases())
    assert (kb.documents, kb.chunks) == (1, 1)
    hits = search(store, embedder, "a", ["kb"], "records of 1950", k=10)
    assert [h.text for h in hits] == ["The archive moved to the cellar."]
    [record] = run(store.documents("a", "kb"))
    assert record.chunks == 1


def test_one_clients_knowledge_base_is_out_of_reach_of_another(store, embedder, chunker) -> None:
    put(store, embedder, chunker, "a", "handbook", "hotel.md", "Hotels are capped at 140 euros.")
    put(store, embedder, chunker, "b", "handbook", "hotel.md", "Hotels are capped at 95 euros.")
    put(store, embedder, chunker, "b", "secrets", "plans.md", "The merger closes in May.")
    assert store.collection_name("a", "handbook") != store.collection_name("b", "handbook")
    a = search(store, embedder, "a", ["handbook", "secrets"], "hotel cap", k=10)
    assert [h.text for h in a] == ["Hotels are capped at 140 euros."]
    b = search(store, embedder, "b", ["handbook"], "hotel cap", k=10)
    assert [h.text for h in b] == ["Hotels are capped at 95 euros."]
    assert run(store.exists("b", "secrets")) and not run(store.exists("a", "secrets"))
    assert [(k.client_id, k.name) for k in run(store.knowledge_bases("a"))] == [("a", "handbook")]


def test_a_foreign_point_in_a_collection_is_never_returned(store, embedder, chunker) -> None:
    """Second line of defence: every hit's owner is checked, whatever the index holds."""
    from qdrant_client import models

    put(store, embedder, chunker, "a", "kb", "mine.md", "My notes about the garden.")
    vector = embedder.encode_sync(["Notes about the garden, planted here."])[0]
    store.client.upsert(  # as if a bug or an operator had written b's point there
        store.collection_name("a", "kb"),
        points=[
            models.PointStruct(
                id=chunk_id("planted", 0),
                vector=vector.tolist(),
                payload={"client_id": "b", "knowledge_base": "kb", "text": "b's", "chunk": 0},
            )
        ],
    )
    hits = search(store, embedder, "a", ["kb"], "garden notes", k=10)
    assert [h.text for h in hits] == ["My notes about the garden."]


def test_the_index_survives_a_restart(tmp_path: Path, embedder, chunker) -> None:
    first = KnowledgeBaseStore(path=tmp_path / "q")
    run(first.start(embedder.dimensions))
    put(first, embedder, chunker, "a", "kb", "archive.md", LONG)
    before = search(first, embedder, "a", ["kb"], "records of 1931")
    run(first.close())
    second = KnowledgeBaseStore(path=tmp_path / "q")
    run(second.start(embedder.dimensions))
    try:
        after = search(second, embedder, "a", ["kb"], "records of 1931")
        assert [(h.chunk_id, round(h.score, 5)) for h in after] == [
            (h.chunk_id, round(h.score, 5)) for h in before
        ]
        assert len(after) == 4
        assert [r.chunks for r in run(second.documents("a", "kb"))] == [len(chunker.split(LONG))]
    finally:
        run(second.close())


def test_deleting_documents_and_knowledge_bases(store, embedder, chunker) -> None:
    put(store, embedder, chunker, "a", "kb", "one.md", "First document.")
    put(store, embedder, chunker, "a", "kb", "two.md", LONG)
    removed = run(store.delete_document("a", "kb", "two.md"))
    assert removed is not None and removed.chunks > 1
    assert run(store.delete_document("a", "kb", "two.md")) is None
    assert [h.document for h in search(store, embedder, "a", ["kb"], "archive", k=10)] == ["one.md"]
    assert len(run(store.delete_knowledge_base("a", "kb"))) == 1
    assert not run(store.exists("a", "kb"))
    assert run(store.knowledge_bases()) == []
    assert search(store, embedder, "a", ["kb"], "anything") == []


def test_vectors_are_normalised(embedder) -> None:
    vectors = embedder.encode_sync(["one", "two words", ""])
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1, atol=1e-4)
