"""Retrieval quality with the shipped settings: recall@4 of the right chunk over the test
corpus, with the real embedder and real Qdrant local mode (no model needed).

The right chunk for a question is one of the right document's chunks that holds the
passage answering it (tests/data/rag/questions.json).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from data_plane.rag.chunking import Chunker
from data_plane.rag.embedder import Embedder
from data_plane.rag.parsing import parse_document
from data_plane.rag.store import DocumentRecord, KnowledgeBaseStore, document_id
from data_plane.settings import RetrievalSettings
from tests.conftest import RAG_CORPUS, RAG_DATA

pytestmark = pytest.mark.embedder

TOP_K = 4
MIN_RECALL = 0.9


def normalized(text: str) -> str:
    return " ".join(text.split()).lower()


def test_recall_at_4_of_the_right_chunk(tmp_path: Path, embedder: Embedder) -> None:
    shipped = RetrievalSettings()
    chunker = Chunker(
        embedder.tokenizer,
        chunk_tokens=shipped.chunk_tokens,
        overlap_tokens=shipped.chunk_overlap_tokens,
        tokenizer_name=embedder.name,
    )
    questions = json.loads((RAG_DATA / "questions.json").read_text())
    assert len(questions) >= 30

    async def evaluate() -> tuple[int, list[str]]:
        store = KnowledgeBaseStore(path=tmp_path / "qdrant")
        await store.start(embedder.dimensions)
        try:
            total = 0
            for path in sorted(RAG_CORPUS.iterdir()):
                chunks = chunker.split(parse_document(path.name, path.read_bytes()))
                total += len(chunks)
                record = DocumentRecord(
                    client_id="c",
                    knowledge_base="corpus",
                    document=path.name,
                    document_id=document_id("c", "corpus", path.name),
                    sha256="-",
                    chunker=chunker.signature,
                    chunks=len(chunks),
                    bytes=0,
                    updated_at="-",
                )
                await store.put_document(
                    record, chunks, await embedder.embed([c.text for c in chunks])
                )
            assert total >= 30  # enough chunks that the top 4 is a real choice
            found, missed = 0, []
            for q in questions:
                # every question's passage is in exactly the document it names
                doc_text = parse_document(q["document"], (RAG_CORPUS / q["document"]).read_bytes())
                assert normalized(q["answer"]) in normalized(doc_text), q
                hits = await store.search(
                    "c", ["corpus"], await embedder.embed_query(q["question"]), TOP_K
                )
                if any(
                    h.document == q["document"] and normalized(q["answer"]) in normalized(h.text)
                    for h in hits
                ):
                    found += 1
                else:
                    missed.append(q["question"])
            return found, missed
        finally:
            await store.close()

    found, missed = asyncio.run(evaluate())
    recall = found / len(questions)
    print(f"recall@{TOP_K} = {recall:.3f} over {len(questions)} questions; missed: {missed}")
    assert recall >= MIN_RECALL, missed
