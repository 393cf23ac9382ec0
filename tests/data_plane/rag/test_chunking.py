"""Token-aware chunking with the embedder's own tokenizer."""

from __future__ import annotations

import itertools

import pytest

from data_plane.rag.chunking import Chunker
from data_plane.rag.embedder import Embedder
from tests.conftest import RAG_CORPUS

pytestmark = pytest.mark.embedder

SENTENCES = [
    f"Fact number {i} says that the value of item {i} is {i * 7} units." for i in range(80)
]


def tokens(embedder: Embedder, text: str) -> int:
    return embedder.count_tokens_sync([text])[0]


def test_chunks_fit_the_window_and_cover_the_text(embedder: Embedder, chunker: Chunker) -> None:
    text = " ".join(SENTENCES)
    chunks = chunker.split(text)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.tokens <= 128
        assert tokens(embedder, c.text) <= 128
        assert c.text in text  # a slice of the text as written
    for sentence in SENTENCES:  # every fact is whole in some chunk
        assert any(sentence in c.text for c in chunks), sentence


def test_chunks_overlap_and_cut_at_sentences(chunker: Chunker) -> None:
    chunks = chunker.split(" ".join(SENTENCES))
    for a, b in itertools.pairwise(chunks):
        assert a.text.endswith(".")  # cut after a sentence, not mid-word
        head = b.text.split(". ")[0]
        assert head in a.text  # the next chunk starts inside the previous one
        assert b.text[0].isupper()


def test_headings_open_chunks(chunker: Chunker) -> None:
    text = (RAG_CORPUS / "travel-policy.md").read_text()
    chunks = chunker.split(text)
    assert len(chunks) >= 3
    for c in chunks:
        assert not c.text.rstrip().splitlines()[-1].startswith("#"), c.text


def test_short_empty_and_odd_texts(chunker: Chunker) -> None:
    assert chunker.split("") == []
    assert chunker.split(" \n\n ") == []
    [one] = chunker.split("  A single line.\r\n")
    assert one.text == "A single line." and one.tokens == 4
    no_spaces = "x-" * 500  # 1,000 tokens without a single boundary: cut anyway
    chunks = chunker.split(no_spaces)
    assert len(chunks) >= 8 and all(c.tokens <= 128 for c in chunks)


def test_the_same_text_chunks_the_same_way(chunker: Chunker) -> None:
    text = (RAG_CORPUS / "fleet.md").read_text()
    assert chunker.split(text) == chunker.split(text)


def test_long_documents_are_chunked_in_blocks(chunker: Chunker) -> None:
    text = "\n\n".join(" ".join(SENTENCES) for _ in range(15))  # ~75k characters
    chunks = chunker.split(text)
    assert all(c.tokens <= 128 for c in chunks)
    assert all(s in "".join(c.text for c in chunks) for s in SENTENCES)


def test_signature_names_the_chunking(embedder: Embedder) -> None:
    a = Chunker(embedder.tokenizer, chunk_tokens=128, overlap_tokens=24, tokenizer_name="m")
    b = Chunker(embedder.tokenizer, chunk_tokens=96, overlap_tokens=24, tokenizer_name="m")
    assert a.signature != b.signature
    assert (
        a.signature
        == Chunker(
            embedder.tokenizer, chunk_tokens=128, overlap_tokens=24, tokenizer_name="m"
        ).signature
    )
