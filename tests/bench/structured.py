"""Constrained decoding: tokens/s of a json_schema-constrained generation against the same
generation unconstrained, side by side in one run.

The engine (``LlamaEngine``, the bundled SmolLM2-135M, greedy) writes ``TOKENS`` tokens
for the same chat prompt, once under the grammar of a JSON Schema (a class register:
at least 50 students, each with a name, an age and a city, so the constrained answer
can't end early) and once free. Each is run with one session, and with eight
sessions decoding together (all constrained, or all free). The two conditions alternate
in pairs, back to back, for ``ROUNDS`` rounds (the order swapped every round); reported
are the median tokens/s and the median of the pairs' ratios (the machine is shared:
its load drifts between pairs far more than within one). Also reported: sampled runs
(temperature 1), where the grammar checks every candidate (the greedy shortcut does not
apply).

``python -m tests.bench structured``; takes about two minutes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from data_plane.engine.base import Constraint, Generation, SamplingParams
from data_plane.engine.llama import EngineConfig, LlamaEngine
from data_plane.engine.structured import json_schema_constraint
from data_plane.runtime import engine_config
from data_plane.settings import EngineSettings, Settings
from tests.bench import write_section
from tests.conftest import bundled_model_spec

TOKENS = 128
ROUNDS = 5
SESSIONS = 8
CASES = [("1", 1, 0.0), (str(SESSIONS), SESSIONS, 0.0), ("sampled", 1, 1.0)]
# A prompt the model answers at length when free too (both runs write TOKENS tokens).
PROMPT = "Write JSON for a class register of 50 students: their names, ages and home cities."
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "students": {
            "type": "array",
            "minItems": 50,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "city": {"type": "string"},
                },
                "required": ["name", "age", "city"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["students"],
    "additionalProperties": False,
}


async def _run(
    engine: LlamaEngine, sessions: int, constraint: Constraint | None, temperature: float = 0.0
) -> tuple[float, int]:
    """(tokens/s over all sessions, tokens written) of ``sessions`` generations at once."""
    prompt = engine.chat_tokens([{"role": "user", "content": PROMPT}])
    params = SamplingParams(
        max_tokens=TOKENS, temperature=temperature, seed=7, constraint=constraint
    )
    seqs = [await engine.open_sequence(f"c{i}") for i in range(sessions)]
    results = [Generation() for _ in seqs]

    async def one(i: int) -> None:
        stream = await engine.generate(seqs[i], prompt, params, results[i])
        async for _ in stream:
            pass

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    elapsed = time.perf_counter() - started
    for seq in seqs:
        await engine.close_sequence(seq)
    tokens = sum(r.completion_tokens for r in results)
    return tokens / elapsed, tokens


async def _bench() -> dict[str, Any]:
    spec = bundled_model_spec()
    info = engine_config(spec, Settings(engine=EngineSettings(context_size=1024))).info
    engine = LlamaEngine(
        EngineConfig(path=spec.path, info=info, threads=os.cpu_count() or 1, max_sequences=8)
    )
    constraint = json_schema_constraint(SCHEMA)
    engine.prepare_constraint(constraint)
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    written: dict[str, int] = {}
    try:
        await _run(engine, 1, None)  # warm-up
        for round_ in range(ROUNDS):
            for key, sessions, temperature in CASES:
                # Each pair runs back to back (order swapped every round) and gives one
                # ratio: the machine's load drifts between pairs, far less within one.
                order = [None, constraint] if round_ % 2 == 0 else [constraint, None]
                pair = {}
                for c in order:
                    name = f"{'constrained' if c else 'free'}-{key}"
                    pair[name], written[name] = await _run(engine, sessions, c, temperature)
                    rates.setdefault(name, []).append(pair[name])
                ratios.setdefault(key, []).append(pair[f"constrained-{key}"] / pair[f"free-{key}"])
    finally:
        await engine.aclose()
    return {
        "rates": {k: statistics.median(v) for k, v in rates.items()},
        "ratios": {k: statistics.median(v) for k, v in ratios.items()},
        "written": written,
    }


def main() -> None:
    load = os.getloadavg()[0]
    out = asyncio.run(_bench())
    rates, ratios, written = out["rates"], out["ratios"], out["written"]

    def row(label: str, key: str) -> str:
        free, constrained = rates[f"free-{key}"], rates[f"constrained-{key}"]
        return (
            f"| {label} | {free:.1f} ({written[f'free-{key}']}) | "
            f"{constrained:.1f} ({written[f'constrained-{key}']}) | "
            f"**{ratios[key]:.2f}** |"
        )

    body = f"""
## Constrained decoding: json_schema against the same generation free

`LlamaEngine` with the bundled SmolLM2-135M writes {TOKENS} tokens for the same chat prompt
under the grammar of a JSON Schema (a class register of at least 50 students,
each with a name, an age and a city) and without it. Greedy, one session and
{SESSIONS} sessions decoding together; the two conditions alternate for {ROUNDS} rounds
(each pair back to back, order swapped every round): median tokens/s, and the median
of the rounds' ratios. The sampled row (temperature 1) is where the grammar checks
every candidate. `tests/bench/structured.py`.

| run | free tokens/s (tokens) | constrained tokens/s (tokens) | constrained / free |
|---|---:|---:|---:|
{row("1 session, greedy", "1")}
{row(f"{SESSIONS} sessions, greedy", str(SESSIONS))}
{row("1 session, temperature 1", "sampled")}

Target: constrained / free at least 0.8 (greedy). Load average when the run started:
{load:.1f} (absolute tokens/s depend on what else the machine runs; the ratios are
measured side by side).
"""
    print(body)
    write_section("structured", body)
