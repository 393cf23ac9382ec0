"""Speculative decoding by prompt lookup: the same output as one token a step.

Two engines on the real model, one drafting (``prompt_lookup``) and one not (``off``),
are given the same turns: prompts that ask to quote their sources (long spans to
copy, drafts taken and refused) and prompts with nothing to copy. What a client sees
must be the same: the text, the tokens, the finish reason, the token counts, the
log-probabilities; and a session's cells must hold exactly its tokens after a refused
draft, so its next turn goes on the same way. The draft function's own unit tests
(a session drafts from its own tokens only) are at the end.

One caveat, from llama.cpp's CPU kernels rather than from drafting: a batch of one
token is multiplied by a different kernel (a dot product per row) than a batch of two
or more (tiled), and the two round differently, by up to a few tenths of a log-probability.
A drafting session's rows come from batches of several tokens where the other engine's
came from batches of one, so at a near-tie (the two likeliest tokens within
``NEAR_TIE`` of each other) the greedy choice may go the other way. Where outputs
differ, the tests check that they part at such a tie, and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_plane.engine.base import Generation, SamplingParams, TokenLogprob
from data_plane.engine.llama import LlamaEngine, LlamaSequence
from data_plane.engine.speculation import PromptLookup
from data_plane.services.retrieval import CONTEXT_TEMPLATE
from shared.config import ModelSpec
from tests.data_plane.engine_prompts import PROMPTS
from tests.data_plane.test_engine_scheduler import make_engine

NEAR_TIE = 0.3  # log-probability: further apart than the two kernels round (seen: 0.16)
CORPUS = Path(__file__).resolve().parents[1] / "data" / "rag" / "corpus"
# Retrieval-augmented chats whose answers quote their sources, as the retrieval
# service builds them (sources, then the question).
QUOTING = [
    (("canteen.md",), "What are the canteen's opening hours and prices? Quote the source."),
    (("it-support.md", "fleet.md"), "Which VPN do I use when working from home?"),
    (("travel-policy.md",), "What does the travel policy say about hotels? Quote it."),
]


def rag_messages(documents: tuple[str, ...], question: str) -> list[dict[str, str]]:
    blocks = [
        f"[{i}] {name}\n" + (CORPUS / name).read_text()[:1200]
        for i, name in enumerate(documents, 1)
    ]
    content = CONTEXT_TEMPLATE.format(sources="\n\n".join(blocks), question=question)
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def engines(model_spec: ModelSpec) -> Iterator[dict[str, LlamaEngine]]:
    pair = {
        mode: make_engine(model_spec, speculation=mode, max_draft=8)
        for mode in ("prompt_lookup", "off")
    }
    yield pair
    for engine in pair.values():
        asyncio.run(engine.aclose())


@dataclass(frozen=True)
class Seen:
    """What a client sees of one turn."""

    text: str
    generated: tuple[int, ...]
    finish: str | None
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...]


async def turn(
    engine: LlamaEngine, seq: LlamaSequence, prompt: list[int], **params: object
) -> Seen:
    result = Generation()
    params.setdefault("max_tokens", 96)
    params.setdefault("temperature", 0.0)
    stream = await engine.generate(seq, prompt, SamplingParams(**params), result)  # type: ignore[arg-type]
    text = "".join([chunk async for chunk in stream])
    # The cells end where the tokens do: no cell of a refused draft is left behind.
    assert seq.slot is not None
    assert await engine.slot_cells(seq.slot) == (0, len(seq.tokens) - 1)
    return Seen(
        text,
        tuple(seq.tokens[len(prompt) :]),
        result.finish_reason,
        result.completion_tokens,
        tuple(result.logprobs),
    )


def both(
    engines: dict[str, LlamaEngine], messages: list[dict[str, str]], **params: object
) -> tuple[list[Seen], list[Seen], tuple[int, int]]:
    """The same turn, and a follow-up turn in the same session (its cells reused), on
    each engine; the drafting session's counts (draft tokens decoded, and taken)."""

    async def one(engine: LlamaEngine) -> tuple[list[Seen], tuple[int, int]]:
        seq = await engine.open_sequence()
        first = await turn(engine, seq, engine.chat_tokens(messages), **params)
        follow = [
            *messages,
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "Say that again, word for word."},
        ]
        second = await turn(engine, seq, engine.chat_tokens(follow), **params)
        counts = (seq.drafted, seq.draft_taken)
        await engine.close_sequence(seq)
        return [first, second], counts

    on, counts = asyncio.run(one(engines["prompt_lookup"]))
    off, _ = asyncio.run(one(engines["off"]))
    return on, off, counts


def assert_same(a: Seen, b: Seen) -> None:
    """The same turn: text, tokens, finish and counts exactly; the log-probabilities of
    the same tokens, to the kernels' rounding."""
    assert (a.text, a.generated, a.finish, a.completion_tokens) == (
        b.text,
        b.generated,
        b.finish,
        b.completion_tokens,
    )
    assert [e.piece for e in a.logprobs] == [e.piece for e in b.logprobs]
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=NEAR_TIE)


def assert_same_but_for_a_near_tie(on: list[Seen], off: list[Seen]) -> None:
    """Turn by turn the same; or, at the first token that differs, the engine without
    drafts had two tokens within NEAR_TIE of each other (what follows a different
    token differs, so the comparison ends there)."""
    for a, b in zip(on, off, strict=True):
        if a.generated == b.generated:
            assert_same(a, b)
            continue
        at = next(
            i
            for i, (x, y) in enumerate(zip([*a.generated, -1], [*b.generated, -2], strict=False))
            if x != y
        )
        (_, best), (_, second) = b.logprobs[at].top[:2]
        assert best - second < NEAR_TIE, f"parted at token {at}, margin {best - second:.3f}"
        return


def test_quoting_chats_write_the_same_tokens_with_drafts_taken_and_refused(
    engines: dict[str, LlamaEngine],
) -> None:
    taken = refused = 0
    for documents, question in QUOTING:
        on, off, counts = both(engines, rag_messages(documents, question), logprobs=2)
        assert_same_but_for_a_near_tie(on, off)
        assert on[0].completion_tokens >= 16
        taken += counts[1]
        refused += counts[0] - counts[1]
    # Drafts did the work, and some were cut short (their cells removed) on the way,
    # yet every turn and the turn after it came out as without them.
    assert taken >= 20
    assert refused > 0


def test_chats_with_nothing_to_copy_write_the_same_tokens(
    engines: dict[str, LlamaEngine],
) -> None:
    for prompt in PROMPTS[:4]:
        on, off, _ = both(engines, [{"role": "user", "content": prompt}], logprobs=2)
        assert_same_but_for_a_near_tie(on, off)


def test_a_seeded_draw_with_drafts_is_reproducible_and_counted_per_token(
    engines: dict[str, LlamaEngine],
) -> None:
    """At temperature 0.7 each row is drawn with the request's own seeded chain, once per
    token (a draft token is kept when the draw picks it): the same seed gives the same
    answer again, one log-probability entry per counted token. (Against the engine
    without drafts, a draw that lands within the kernels' rounding of a boundary
    between two tokens may go the other way, as a greedy near-tie may.)"""
    messages = rag_messages(*QUOTING[1])
    first, _, counts = both(engines, messages, temperature=0.7, seed=11, logprobs=2)
    again, _, _ = both(engines, messages, temperature=0.7, seed=11, logprobs=2)
    assert first == again
    assert all(len(t.logprobs) == t.completion_tokens > 0 for t in first)
    assert counts[0] > 0


def test_stop_strings_and_max_tokens_end_a_turn_as_without_drafts(
    engines: dict[str, LlamaEngine],
) -> None:
    messages = rag_messages(*QUOTING[1])

    plain, _, _ = both(engines, messages, max_tokens=24, logprobs=2)
    stop = plain[0].text[12:16]  # a stop string inside the first answer
    on, off, _ = both(engines, messages, stop=(stop,), max_tokens=24, logprobs=2)
    assert_same_but_for_a_near_tie(on, off)
    assert on[0].finish == "stop"
    on, off, _ = both(engines, messages, max_tokens=7, logprobs=2)
    assert_same_but_for_a_near_tie(on, off)
    assert [(t.completion_tokens, t.finish) for t in on] == [(7, "length")] * 2


# --- the draft function ----------------------------------------------------------------


def test_a_draft_is_what_followed_the_latest_earlier_occurrence() -> None:
    lookup = PromptLookup(max_draft=8)
    history = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3]
    lookup.sync(history)
    # The last three tokens (1 2 3) occurred at the start: what followed them.
    assert lookup.draft(3) == [4, 5, 9]
    lookup.sync([*history, 6, 2, 3])
    # 6 2 3 never occurred before, 2 3 did: the latest time, 6 2 3 followed (a first
    # draft is at most 4 tokens; this one runs into the end of the history).
    assert lookup.draft(8) == [6, 2, 3]
    lookup.sync([*history, 6, 2, 3, 42])
    assert lookup.draft(8) == []  # nothing seen before ends like this


def test_a_session_drafts_from_its_own_tokens_only() -> None:
    """Two sessions, each with its own lookup (as each generation has): one has read
    a span the other's last tokens start; the other never drafts that span."""
    reader, other = PromptLookup(max_draft=8), PromptLookup(max_draft=8)
    reader.sync([10, 11, 12, 13, 14, 15, 16, 10, 11])
    other.sync([20, 21, 10, 11])
    assert reader.draft(8) == [12, 13, 14, 15]
    assert other.draft(8) == []
    other.sync([20, 21, 10, 11, 30, 10, 11])
    assert other.draft(8) == [30, 10, 11]


def test_drafts_shrink_and_cool_down_when_refused_and_grow_when_taken() -> None:
    lookup = PromptLookup(max_draft=8)
    lookup.sync([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 5, 6])
    assert len(lookup.draft(8)) == 4  # a first draft is short
    lookup.verified(4, 4)
    assert len(lookup.draft(8)) == 8  # taken whole: twice as long
    lookup.verified(8, 0)
    assert lookup.draft(8) == []  # refused at once: a step without a draft
    assert len(lookup.draft(8)) == 4
    lookup.verified(4, 2)
    assert len(lookup.draft(8)) == 3  # cut short: what was taken, and one more
