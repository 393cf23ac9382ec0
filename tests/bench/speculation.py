"""Speculative decoding by prompt lookup: tokens/s with drafts against without.

Two engines in this process on the bundled model, the same settings but
``speculation`` (``prompt_lookup`` and ``off``), are given the same greedy chats:

- retrieval-augmented chats over the test corpus (tests/data/rag/corpus), built as the
  retrieval service builds them (numbered sources, then the question), whose answers
  quote their sources (target: at least 1.3x the tokens/s without drafts);
- chats with nothing to copy (the engine tests' eight prompts; target: at least 0.95x).

Each workload runs one chat at a time, and then all of its chats at once (a full
step). Tokens/s is the decode rate: completion tokens after the first over the time
from the first text to the last (the prompt's evaluation is the same for both and is
left out). The engines take turns, in alternating order, for ``ROUNDS`` rounds; each
ratio is the median of the rounds' ratios. Also reported: draft tokens decoded and
taken, and how many answers came out the same text (llama.cpp rounds a one-token batch
differently from a larger one, so a near-tie may go the other way: docs/engine.md).

``python -m tests.bench speculation``; a few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from data_plane.engine.base import Generation, SamplingParams
from data_plane.engine.llama import EngineConfig, LlamaEngine
from data_plane.runtime import engine_config
from data_plane.services.retrieval import CONTEXT_TEMPLATE
from data_plane.settings import Settings
from tests.bench import OtherLoad, write_section
from tests.conftest import bundled_model_spec
from tests.data_plane.engine_prompts import PROMPTS

ROUNDS = int(os.environ.get("SANCTUM_BENCH_ROUNDS", "3"))
MAX_TOKENS = 128
CONTEXT = 2048
CORPUS = Path(__file__).resolve().parents[1] / "data" / "rag" / "corpus"
QUOTE = "Quote the sentences of the sources that answer it, word for word."
RAG = [
    (("canteen.md",), "What are the canteen's opening hours and prices?"),
    (("travel-policy.md",), "What does the travel policy say about hotels and receipts?"),
    (("leave-policy.md",), "How many days of annual leave do employees get?"),
    (("it-support.md", "fleet.md"), "Which VPN do I use when working from home?"),
]
MODES = ("off", "prompt_lookup")


def rag_chat(documents: tuple[str, ...], question: str) -> list[dict[str, str]]:
    blocks = [
        f"[{i}] {name}\n" + (CORPUS / name).read_text()[:1500]
        for i, name in enumerate(documents, 1)
    ]
    content = CONTEXT_TEMPLATE.format(sources="\n\n".join(blocks), question=f"{question} {QUOTE}")
    return [{"role": "user", "content": content}]


@dataclass
class Answer:
    text: str
    tokens: int
    decode_seconds: float  # first text to last
    drafted: int
    taken: int


async def answer(engine: LlamaEngine, messages: list[dict[str, str]]) -> Answer:
    seq = await engine.open_sequence()
    result = Generation()
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    stream = await engine.generate(seq, engine.chat_tokens(messages), params, result)
    parts: list[str] = []
    first = last = 0.0
    async for chunk in stream:
        last = time.perf_counter()
        first = first or last
        parts.append(chunk)
    out = Answer(
        "".join(parts), result.completion_tokens, last - first, seq.drafted, seq.draft_taken
    )
    await engine.close_sequence(seq)
    return out


async def workload(
    engine: LlamaEngine, chats: list[list[dict[str, str]]], together: bool
) -> list[Answer]:
    if together:
        return list(await asyncio.gather(*(answer(engine, c) for c in chats)))
    return [await answer(engine, c) for c in chats]


def decode_rate(answers: list[Answer], together: bool) -> float:
    """Tokens/s after the first token: per chat, summed over chats one at a time; for
    chats at once, all their tokens over the longest chat's decode time."""
    tokens = sum(max(0, a.tokens - 1) for a in answers)
    if together:
        return tokens / max(a.decode_seconds for a in answers)
    return tokens / sum(a.decode_seconds for a in answers)


def main() -> None:
    spec = bundled_model_spec()
    node = engine_config(spec, Settings(engine={"context_size": CONTEXT}))
    threads = max(1, os.cpu_count() or 1)
    engines = {
        mode: LlamaEngine(
            EngineConfig(
                path=spec.path,
                info=node.info,
                threads=threads,
                max_sequences=8,
                speculation=mode,
                max_draft=node.max_draft,
            )
        )
        for mode in MODES
    }
    workloads = {
        "retrieval-augmented, quoting": [rag_chat(*q) for q in RAG],
        "nothing to copy": [[{"role": "user", "content": p}] for p in PROMPTS[:4]],
    }
    for engine in engines.values():  # first use: buffers, caches, pages of the model
        asyncio.run(answer(engine, workloads["nothing to copy"][0]))
    load = OtherLoad()
    rows = []
    try:
        for name, chats in workloads.items():
            for together in (False, True):
                ratios, rates = [], {m: [] for m in MODES}
                same = total = drafted = taken = 0
                for r in range(ROUNDS):
                    order = MODES if r % 2 == 0 else MODES[::-1]
                    got = {m: asyncio.run(workload(engines[m], chats, together)) for m in order}
                    for m in MODES:
                        rates[m].append(decode_rate(got[m], together))
                    ratios.append(rates["prompt_lookup"][-1] / rates["off"][-1])
                    same += sum(
                        a.text == b.text
                        for a, b in zip(got["off"], got["prompt_lookup"], strict=True)
                    )
                    total += len(chats)
                    drafted += sum(a.drafted for a in got["prompt_lookup"])
                    taken += sum(a.taken for a in got["prompt_lookup"])
                shape = f"{len(chats)} at once" if together else "one at a time"
                rows.append(
                    f"| {name} | {shape} | {statistics.median(rates['off']):.1f} | "
                    f"{statistics.median(rates['prompt_lookup']):.1f} | "
                    f"**{statistics.median(ratios):.2f}x** | {taken}/{drafted} | {same}/{total} |"
                )
                print(rows[-1], flush=True)
    finally:
        for engine in engines.values():
            asyncio.run(engine.aclose())
    share = load.share()
    body = "\n".join(
        [
            "Speculative decoding by prompt lookup (`SANCTUM_DP_ENGINE__SPECULATION`): the same "
            f"greedy chats on two engines, drafts on and off, {ROUNDS} alternating rounds, "
            f"medians; {MAX_TOKENS} tokens at most per answer, {threads} threads, "
            f"max draft {node.max_draft}. Decode tokens/s (after the first token).",
            "Targets: retrieval-augmented chats at least 1.3x, nothing to copy at least 0.95x.",
            "",
            "| chats | how | tokens/s off | tokens/s drafts | ratio | draft tokens taken | "
            "same text |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Other processes took {share:.0%} of the machine while it ran"
            + (" (the numbers are disturbed)." if share > 0.05 else "."),
        ]
    )
    write_section("speculation", body)
    print(body)


if __name__ == "__main__":
    main()
