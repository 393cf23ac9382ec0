"""Fitting retrieved chunks into the model's context (the code around the engine: the
engine is a stand-in that counts one token per word; the real one is in test_rag_api)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from data_plane.engine.base import ModelInfo
from data_plane.rag.store import Hit
from data_plane.services.retrieval import fit_context


class WordEngine:
    def __init__(self, context_size: int) -> None:
        self.info = ModelInfo("m", "1", "0" * 64, context_size)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return [0] * len(text.split())

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return [0] * sum(3 + len(m["content"].split()) for m in messages)


def hit(i: int, words: int) -> Hit:
    text = " ".join(f"w{i}_{j}" for j in range(words))
    return Hit("knowledge_base", "kb", f"doc{i}.md", 0, f"id{i}", 1.0 - i / 100, text)


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does the handbook say?"},
]


def test_everything_fits_when_there_is_room() -> None:
    engine = WordEngine(4096)
    hits = [hit(i, 50) for i in range(4)]
    out, used, tokens = fit_context(MESSAGES, 1, hits, engine, reserve=256, max_context_tokens=1024)  # type: ignore[arg-type]
    assert [h for h, _ in used] == hits and not any(cut for _, cut in used)
    assert out[0] == MESSAGES[0]
    assert out[1]["content"].endswith("Question: What does the handbook say?")
    assert "[1] doc0.md\nw0_0" in out[1]["content"] and "[4] doc3.md" in out[1]["content"]
    assert tokens == sum(len(f"[{i + 1}] doc{i}.md\n".split()) + 50 for i in range(4))
    assert MESSAGES[1]["content"] == "What does the handbook say?"  # the caller's untouched


@pytest.mark.parametrize("context_size", [300, 400, 555, 800, 1000])
@pytest.mark.parametrize("reserve", [16, 100, 200])
def test_never_overflows_and_cuts_the_last_chunk(context_size: int, reserve: int) -> None:
    engine = WordEngine(context_size)
    hits = [hit(i, 120) for i in range(6)]
    out, used, _ = fit_context(MESSAGES, 1, hits, engine, reserve=reserve, max_context_tokens=1024)  # type: ignore[arg-type]
    assert len(engine.chat_tokens(out)) + reserve <= context_size
    assert [h for h, _ in used] == hits[: len(used)]  # best first, in order
    assert all(not cut for _, cut in used[:-1])
    if used and used[-1][1]:  # a cut chunk keeps a prefix of its text
        last_block = out[1]["content"].split(f"[{len(used)}] ")[1]
        assert last_block.split("\n", 1)[1].split("\n\n")[0] in used[-1][0].text


def test_the_cap_on_context_tokens_holds() -> None:
    engine = WordEngine(100_000)
    hits = [hit(i, 100) for i in range(10)]
    _, used, tokens = fit_context(MESSAGES, 1, hits, engine, reserve=256, max_context_tokens=350)  # type: ignore[arg-type]
    assert tokens <= 350 and 3 <= len(used) <= 4


def test_no_room_leaves_the_messages_alone() -> None:
    engine = WordEngine(60)
    out, used, tokens = fit_context(
        MESSAGES, 1, [hit(0, 10)], engine, reserve=30, max_context_tokens=1024
    )  # type: ignore[arg-type]
    assert out == MESSAGES and used == [] and tokens == 0
