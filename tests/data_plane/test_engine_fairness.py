"""Fair turns across clients in the scheduler, on the real model, driven in process.

A client that holds every slot gives one up to a client that has none (its newest
generation pauses: KV state to RAM, slot to the other), a client at its caps is refused
while others are admitted, time slices rotate the slots when there are more clients than
slots, and parked RAM stays under its caps by dropping the oldest state. Every case also
checks what a client would notice: at temperature 0 a paused, resumed or re-evaluated
generation writes exactly what it writes alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from data_plane.engine.base import ClientBusy, ClientCaps, EngineBusy, Generation, SamplingParams
from data_plane.engine.llama import LlamaEngine, LlamaSequence
from shared.config import ModelSpec
from tests.data_plane.engine_prompts import COUNTING, PROMPTS
from tests.data_plane.test_engine_scheduler import chat, complete, make_engine, run, until

pytestmark = pytest.mark.model

GREEDY = SamplingParams(max_tokens=48, temperature=0.0)


@pytest.fixture(scope="module")
def engine(model_spec: ModelSpec) -> Iterator[LlamaEngine]:
    """Eight slots; a client's default caps let it take all of them."""
    e = make_engine(model_spec)
    yield e
    asyncio.run(e.aclose())


async def _alone(engine: LlamaEngine, prompt: list[int], max_tokens: int) -> str:
    seq = await engine.open_sequence("reference")
    out = await complete(engine, seq, prompt, max_tokens=max_tokens)
    await engine.close_sequence(seq)
    return out.text


async def _drain(stream: Any) -> str:
    return "".join([chunk async for chunk in stream])


def test_a_client_holding_every_slot_gives_one_to_a_client_with_none(
    engine: LlamaEngine,
) -> None:
    # Eight counting streams (every slot), each long past B's answer.
    a_prompts = [
        engine.text_tokens(", ".join(str(n) for n in range(k, k + 10)) + ",")
        for k in range(1, 80, 10)
    ]
    b_prompt = chat(engine, "Name a colour.")
    a_params = replace(GREEDY, max_tokens=120)

    async def main() -> dict[str, Any]:
        a_alone = [await _alone(engine, p, 120) for p in a_prompts]
        b_alone = await _alone(engine, b_prompt, 16)
        paused_before = engine.stats().paused
        a_seqs = [await engine.open_sequence("a") for _ in a_prompts]
        a_results = [Generation() for _ in a_prompts]
        a_streams = [
            await engine.generate(s, p, a_params, r)
            for s, p, r in zip(a_seqs, a_prompts, a_results, strict=True)
        ]
        a_tasks = [asyncio.create_task(_drain(s)) for s in a_streams]
        await until(lambda: all(r.completion_tokens >= 2 for r in a_results))
        held_by_a = engine.stats().running

        # A ninth of A's waits behind its own; B's one gets a slot at the next step.
        extra = await engine.open_sequence("a")
        extra_result = Generation()
        extra_task = asyncio.create_task(
            _drain(await engine.generate(extra, b_prompt, a_params, extra_result))
        )
        b = await engine.open_sequence("b")
        b_result = Generation()
        b_text = await _drain(
            await engine.generate(b, b_prompt, replace(GREEDY, max_tokens=16), b_result)
        )
        a_running_when_b_done = sum(r.finish_reason is None for r in a_results)
        a_done_when_b_done = min(r.completion_tokens for r in a_results)
        extra_waited = extra_result.completion_tokens == 0
        a_texts = await asyncio.gather(*a_tasks)
        await extra_task
        for seq in [*a_seqs, extra, b]:
            await engine.close_sequence(seq)
        return {
            "a_alone": a_alone,
            "b_alone": b_alone,
            "held_by_a": held_by_a,
            "b_text": b_text,
            "a_texts": list(a_texts),
            "a_running_when_b_done": a_running_when_b_done,
            "a_done_when_b_done": a_done_when_b_done,
            "extra_waited": extra_waited,
            "paused": engine.stats().paused - paused_before,
            "parked_after": engine.stats().parked_bytes,
        }

    r = run(main)
    assert r["held_by_a"] == {"a": 8}
    # B was answered while A's generations were all still running, ahead of A's ninth...
    assert r["a_running_when_b_done"] == 8 and r["extra_waited"]
    assert r["a_done_when_b_done"] < 120
    assert r["paused"] >= 1  # ...because one of A's gave B its slot
    # ...and nobody can tell: every answer is what it is alone.
    assert r["b_text"] == r["b_alone"]
    assert r["a_texts"] == r["a_alone"]
    assert r["parked_after"] == 0


def test_a_client_at_its_caps_is_refused_while_another_is_admitted(
    engine: LlamaEngine,
) -> None:
    caps = ClientCaps(max_running=2, max_queued=1, max_parked_bytes=1 << 30)
    long = SamplingParams(max_tokens=400, temperature=0.0)

    async def main() -> tuple[str, dict[str, int], str]:
        a_seqs = [await engine.open_sequence("a") for _ in range(4)]
        streams = [
            await engine.generate(s, engine.text_tokens(COUNTING), long, Generation(), caps)
            for s in a_seqs[:3]
        ]
        await until(lambda: engine.stats().running.get("a") == 2)
        running = engine.stats().running
        with pytest.raises(ClientBusy) as refused:
            await engine.generate(a_seqs[3], chat(engine, PROMPTS[0]), long, Generation(), caps)
        b = await engine.open_sequence("b")
        b_text = (await complete(engine, b, chat(engine, PROMPTS[0]), max_tokens=8)).text
        for stream in streams:
            await stream.aclose()
        for seq in [*a_seqs, b]:
            await engine.close_sequence(seq)
        return str(refused.value), running, b_text

    message, running, b_text = run(main)
    assert "its limit" in message and "3 generations" in message
    assert running == {"a": 2}  # its third waited although six slots were free
    assert b_text


def test_the_models_own_queue_limit_refuses_those_in_it_not_newcomers(
    model_spec: ModelSpec,
) -> None:
    """One slot and one queue place: client a fills both and its third is refused for
    the model's queue (not its own caps), while client c, with nothing queued, still
    gets a place: a few clients can't shut the model to everyone else."""
    engine = make_engine(model_spec, max_sequences=1, max_queue=1)

    async def main() -> None:
        a1, a2, a3, c = [await engine.open_sequence(x) for x in ("a", "a", "a", "c")]
        params = SamplingParams(max_tokens=300, temperature=0.0)
        first = await engine.generate(a1, engine.text_tokens(COUNTING), params, Generation())
        second = await engine.generate(a2, engine.text_tokens(COUNTING), params, Generation())
        with pytest.raises(EngineBusy) as busy:
            await engine.generate(a3, [1, 2, 3], params, Generation())
        assert not isinstance(busy.value, ClientBusy)
        newcomer = await engine.generate(c, engine.text_tokens(COUNTING), params, Generation())
        assert engine.stats().waiting.get("c") == 1 or engine.stats().running.get("c") == 1
        for stream in (first, second, newcomer):
            await stream.aclose()
        await engine.aclose()

    run(main)


def test_time_slices_rotate_the_slots_among_more_clients_than_slots(
    model_spec: ModelSpec,
) -> None:
    slice_tokens = 12
    engine = make_engine(model_spec, max_sequences=2, time_slice_tokens=slice_tokens)
    prompts = [chat(engine, PROMPTS[i]) for i in (1, 2, 5)]  # answers longer than 2 slices
    params = SamplingParams(max_tokens=64, temperature=0.0)

    async def main() -> dict[str, Any]:
        alone = [await _alone(engine, p, 64) for p in prompts]
        seqs = [await engine.open_sequence(c) for c in ("a", "b", "c")]
        results = [Generation() for _ in seqs]
        streams = [
            await engine.generate(s, p, params, r)
            for s, p, r in zip(seqs, prompts, results, strict=True)
        ]
        tasks = [asyncio.create_task(_drain(s)) for s in streams]
        # The third client got its turn while the first two were still generating.
        await until(lambda: results[2].completion_tokens > 0)
        others_when_c_started = [r.finish_reason for r in results[:2]]
        texts = await asyncio.gather(*tasks)
        for seq in seqs:
            await engine.close_sequence(seq)
        stats = engine.stats()
        await engine.aclose()
        return {
            "alone": alone,
            "texts": list(texts),
            "others_when_c_started": others_when_c_started,
            "completion": [r.completion_tokens for r in results],
            "paused": stats.paused,
        }

    r = run(main)
    assert all(n > 2 * slice_tokens for n in r["completion"])  # long enough to slice
    assert r["others_when_c_started"].count(None) >= 1
    assert r["paused"] >= 1
    assert r["texts"] == r["alone"]


def test_parked_ram_stays_under_its_caps_and_dropped_sessions_answer_the_same(
    model_spec: ModelSpec,
) -> None:
    """Two slots, six sessions: four park at a time. The engine's cap holds about two
    states, client b's own cap less than one: their oldest states are dropped, and those
    sessions evaluate their tokens again, writing what they would have written anyway."""
    probe = make_engine(model_spec, max_sequences=2)
    state_bytes = _state_size(probe, chat(probe, PROMPTS[0]))
    run(probe.aclose)
    engine = make_engine(model_spec, max_sequences=2, max_parked_bytes=int(state_bytes * 2.5))
    b_caps = replace(engine.default_caps, max_parked_bytes=state_bytes // 2)

    async def main() -> dict[str, Any]:
        clients = ["a", "a", "a", "a", "b", "b"]
        seqs = [await engine.open_sequence(c) for c in clients]
        caps = [b_caps if c == "b" else None for c in clients]
        first = [chat(engine, p) for p in PROMPTS[:6]]
        outs, peaks = [], []
        for seq, prompt, cap in zip(seqs, first, caps, strict=True):
            result = Generation()
            outs.append(await _drain(await engine.generate(seq, prompt, GREEDY, result, cap)))
            peaks.append(engine.stats())
        evaluated_before = [s.evaluated for s in seqs]
        held = [list(s.tokens) for s in seqs]  # what each expects its cells to hold
        second = [
            chat(engine, p, out, "Say that again in other words.")
            for p, out in zip(PROMPTS[:6], outs, strict=True)
        ]
        again = []
        for seq, prompt, cap in zip(seqs, second, caps, strict=True):
            result = Generation()
            again.append(await _drain(await engine.generate(seq, prompt, GREEDY, result, cap)))
            peaks.append(engine.stats())
        # Tokens each evaluated beyond the new part of its prompt and its answer: those
        # it had to evaluate again because its cells were gone.
        reevaluated = [
            s.evaluated - before - (len(s.tokens) - _common(h, p))
            for s, before, h, p in zip(seqs, evaluated_before, held, second, strict=True)
        ]
        for seq in seqs:
            await engine.close_sequence(seq)
        after = engine.stats()
        # The reference: the same two turns on an engine with room for every state.
        roomy = make_engine(model_spec, max_sequences=8)
        reference = []
        for p1, p2 in zip(first, second, strict=True):
            seq = await roomy.open_sequence("r")
            await complete(roomy, seq, p1, max_tokens=48)
            reference.append((await complete(roomy, seq, p2, max_tokens=48)).text)
            await roomy.close_sequence(seq)
        await roomy.aclose()
        await engine.aclose()
        return {
            "peaks": peaks,
            "after": after,
            "again": again,
            "reference": reference,
            "reevaluated": reevaluated,
        }

    r = run(main)
    cap = int(state_bytes * 2.5)
    assert all(p.parked_bytes <= cap for p in r["peaks"])
    assert all(p.parked_bytes_by_client.get("b", 0) == 0 for p in r["peaks"])
    assert max(p.parked_bytes for p in r["peaks"]) > 0
    assert r["after"].parked_dropped >= 2 and r["after"].parked_bytes == 0
    assert any(n > 0 for n in r["reevaluated"])  # some sessions lost their cells...
    assert r["again"] == r["reference"]  # ...and answered exactly as they would have


def _common(held: list[int], prompt: list[int]) -> int:
    n = 0
    for x, y in zip(held, prompt, strict=False):
        if x != y:
            break
        n += 1
    return min(n, len(prompt) - 1)


def _state_size(engine: LlamaEngine, prompt: list[int]) -> int:
    """Bytes of one parked state of ``prompt`` plus a short answer."""

    async def main() -> int:
        seqs: list[LlamaSequence] = [await engine.open_sequence("x") for _ in range(3)]
        for seq in seqs:  # two slots: the first is parked when the third runs
            await complete(engine, seq, prompt, max_tokens=48)
        size = engine.stats().parked_bytes
        for seq in seqs:
            await engine.close_sequence(seq)
        return size

    size: int = run(main)
    assert size > 0
    return size


def test_a_client_at_its_running_cap_does_not_sit_on_slots(model_spec: ModelSpec) -> None:
    """Four slots, all held by client A's warm sessions; A may run one generation at a
    time and queues four. B and C are answered at once: the slots of A's sessions whose
    turns can't run yet are parked for them."""
    engine = make_engine(model_spec, max_sequences=4, time_slice_tokens=0)
    caps_a = replace(engine.default_caps, max_running=1)
    prompt = engine.text_tokens(COUNTING)

    async def main() -> tuple[dict[str, int], list[str | None], str, str]:
        seqs = [await engine.open_sequence("a") for _ in range(4)]
        for seq in seqs:  # each session now holds a slot, idle
            await _drain(await engine.generate(seq, prompt, GREEDY, Generation(), caps_a))
        params = SamplingParams(max_tokens=150, temperature=0.0)
        results = [Generation() for _ in seqs]
        tasks = [
            asyncio.create_task(_drain(await engine.generate(seq, prompt, params, result, caps_a)))
            for seq, result in zip(seqs, results, strict=True)
        ]
        await until(lambda: engine.stats().running == {"a": 1})
        held = dict(engine.stats().waiting)
        b, c = await engine.open_sequence("b"), await engine.open_sequence("c")
        b_text, c_text = await asyncio.gather(
            complete(engine, b, chat(engine, PROMPTS[0]), max_tokens=4),
            complete(engine, c, chat(engine, PROMPTS[1]), max_tokens=4),
        )
        a_finished = [r.finish_reason for r in results]
        await asyncio.gather(*tasks)
        for seq in [*seqs, b, c]:
            await engine.close_sequence(seq)
        await engine.aclose()
        return held, a_finished, b_text.text, c_text.text

    held, a_finished, b_text, c_text = run(main)
    assert held == {"a": 3}
    assert b_text and c_text
    assert a_finished.count(None) >= 3  # answered while A's turns were still to come
