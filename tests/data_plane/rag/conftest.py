"""Retrieval components in this process: the real embedder (loaded once per test run)
and real Qdrant local mode in a temporary folder."""

from __future__ import annotations

import pytest

from data_plane.rag.chunking import Chunker
from data_plane.rag.embedder import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    e = Embedder()
    e.load_sync()
    return e


@pytest.fixture(scope="session")
def chunker(embedder: Embedder) -> Chunker:
    return Chunker(
        embedder.tokenizer, chunk_tokens=128, overlap_tokens=24, tokenizer_name=embedder.name
    )
