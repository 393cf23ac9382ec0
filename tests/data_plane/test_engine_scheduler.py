"""The continuous-batching scheduler on the real model, driven in process.

Here a test can look inside: a session's slot, the KV cells llama.cpp holds for it, the
tokens it evaluated itself, its state parked in RAM. What clients see of the same
behaviour over HTTP is in test_engine_http.py.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from data_plane.engine.base import EngineBusy, EngineError, Generation, SamplingParams
from data_plane.engine.llama import EngineConfig, LlamaEngine, LlamaSequence
from data_plane.runtime import engine_config
from data_plane.settings import Settings
from shared.config import ModelSpec
from tests.data_plane.engine_prompts import COUNTING, PROMPTS

pytestmark = pytest.mark.model

CONTEXT = 1024  # tokens per sequence: enough for every prompt here, and a small KV
PASSWORDS = ["Zorblax", "Quentaris", "Mirabel"]


def long_text(sentences: int) -> str:
    return "Summarize these notes. " + " ".join(
        f"Note {i}: the ship left harbour {i} at dawn and the sea was calm."
        for i in range(sentences)
    )


def make_engine(spec: ModelSpec, **kwargs: Any) -> LlamaEngine:
    # GPU layers as a node would offload them: SANCTUM_DP_ENGINE__N_GPU_LAYERS=-1 runs
    # these tests with every layer on the GPU (scripts/gpu-check.sh); 0, the CPU, unset.
    node = engine_config(spec, Settings(engine={"context_size": CONTEXT}))
    kwargs.setdefault("n_gpu_layers", node.n_gpu_layers)
    return LlamaEngine(
        EngineConfig(path=spec.path, info=node.info, threads=os.cpu_count() or 1, **kwargs)
    )


@pytest.fixture(scope="module")
def engine(model_spec: ModelSpec) -> Iterator[LlamaEngine]:
    e = make_engine(model_spec)
    yield e
    asyncio.run(e.aclose())


@pytest.fixture(scope="module")
def engine_with_drafts(model_spec: ModelSpec) -> Iterator[LlamaEngine]:
    e = make_engine(model_spec, speculation="prompt_lookup")
    yield e
    asyncio.run(e.aclose())


@dataclass(frozen=True)
class Out:
    text: str
    generated: tuple[int, ...]  # the tokens decoded after the prompt
    finish: str | None
    completion_tokens: int


async def complete(
    engine: LlamaEngine,
    seq: LlamaSequence,
    prompt: list[int],
    max_tokens: int = 48,
    params: SamplingParams | None = None,
) -> Out:
    result = Generation()
    params = params or SamplingParams(max_tokens=max_tokens, temperature=0.0)
    stream = await engine.generate(seq, prompt, params, result)
    text = "".join([chunk async for chunk in stream])
    return Out(
        text, tuple(seq.tokens[len(prompt) :]), result.finish_reason, result.completion_tokens
    )


async def until(predicate: Callable[[], bool], timeout: float = 300) -> None:
    """Wait for the scheduler to reach a state (polling, never asserting on time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "the scheduler never got there"
        await asyncio.sleep(0.005)


def chat(engine: LlamaEngine, *turns: str) -> list[int]:
    roles = ["user", "assistant"]
    return engine.chat_tokens([{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)])


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(main())


# --- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("speculation", ["prompt_lookup", "off"])
def test_greedy_output_is_the_same_alone_and_beside_seven_others(
    speculation: str, request: pytest.FixtureRequest
) -> None:
    """Without drafts (the default) and with: a session's drafts come from its own
    tokens and are verified in its own cells, whatever else shares the step."""
    engine: LlamaEngine = request.getfixturevalue(
        "engine_with_drafts" if speculation == "prompt_lookup" else "engine"
    )
    assert engine.config.speculation == speculation
    prompts = [chat(engine, p) for p in PROMPTS]
    long_prompts = [
        engine.chat_tokens([{"role": "user", "content": long_text(n)}]) for n in (40, 45)
    ]

    async def main() -> tuple[list[Out], list[Out], list[Out], list[int]]:
        alone = []
        for prompt in prompts:
            seq = await engine.open_sequence()
            alone.append(await complete(engine, seq, prompt))
            await engine.close_sequence(seq)

        seqs = [await engine.open_sequence() for _ in prompts]
        together = await asyncio.gather(
            *(complete(engine, s, p) for s, p in zip(seqs, prompts, strict=True))
        )
        for seq in seqs:
            await engine.close_sequence(seq)

        # Six of them again, starting while two long prompts are being prefilled.
        long_seqs = [await engine.open_sequence() for _ in long_prompts]
        longs = [
            asyncio.create_task(complete(engine, s, p, max_tokens=4))
            for s, p in zip(long_seqs, long_prompts, strict=True)
        ]
        await until(lambda: all(s.evaluated > 0 for s in long_seqs))
        seqs = [await engine.open_sequence() for _ in prompts[:6]]
        mixed_tasks = [
            asyncio.create_task(complete(engine, s, p)) for s, p in zip(seqs, prompts, strict=False)
        ]
        await until(lambda: all(s.active for s in seqs))  # queued, all six
        prefilled_when_they_started = [s.evaluated for s in long_seqs]
        mixed = await asyncio.gather(*mixed_tasks)
        await asyncio.gather(*longs)
        for seq in [*seqs, *long_seqs]:
            await engine.close_sequence(seq)
        return alone, list(together), list(mixed), prefilled_when_they_started

    alone, together, mixed, prefilled = run(main)
    assert all(o.completion_tokens >= 8 for o in alone)
    assert together == alone
    assert all(0 < n < len(p) for n, p in zip(prefilled, long_prompts, strict=True))
    assert mixed == alone[:6]


def test_greedy_read_from_the_logits_picks_what_llama_cpps_sampler_picks(
    engine: LlamaEngine,
) -> None:
    """A plain greedy generation takes the argmax of its row itself (``_sample``); a zero
    bias on one token leaves the logits as they are but puts the generation through
    llama.cpp's own chain (bias, then its greedy sampler): the same tokens, prompt by
    prompt."""
    prompts = [chat(engine, p) for p in PROMPTS]
    plain = SamplingParams(max_tokens=48, temperature=0.0)
    through_chain = SamplingParams(max_tokens=48, temperature=0.0, logit_bias=((0, 0.0),))
    assert plain.raw_greedy() and not through_chain.raw_greedy()

    async def main() -> list[tuple[Out, Out]]:
        pairs = []
        for prompt in prompts:
            outs = []
            for params in (plain, through_chain):
                seq = await engine.open_sequence()
                outs.append(await complete(engine, seq, prompt, params=params))
                assert seq.work is not None  # which way it picked:
                assert seq.work.greedy is (params is plain)
                await engine.close_sequence(seq)
            pairs.append((outs[0], outs[1]))
        return pairs

    pairs = run(main)
    assert all(a.completion_tokens >= 8 for a, _ in pairs)
    assert [a for a, _ in pairs] == [b for _, b in pairs]


# --- isolation -----------------------------------------------------------------------------


def test_a_session_cannot_see_another_sessions_turns(engine: LlamaEngine) -> None:
    secret = PASSWORDS[0]
    first = f"The password is {secret}. Remember it."
    question = "What is the password?"

    async def main() -> tuple[Out, Out, Out]:
        b = await engine.open_sequence()
        b_before = await complete(engine, b, chat(engine, question), max_tokens=24)
        await engine.close_sequence(b)

        a = await engine.open_sequence()
        a1 = await complete(engine, a, chat(engine, first), max_tokens=24)
        b = await engine.open_sequence()
        a2, b_beside = await asyncio.gather(
            complete(engine, a, chat(engine, first, a1.text, question), max_tokens=24),
            complete(engine, b, chat(engine, question), max_tokens=24),
        )
        for seq in (a, b):
            await engine.close_sequence(seq)
        return a2, b_before, b_beside

    a2, b_before, b_beside = run(main)
    assert secret in a2.text  # the model does use what its own sequence holds
    assert secret not in b_beside.text
    assert b_beside == b_before  # a's cells changed nothing for b


def test_teardown_removes_every_cell_of_the_session(engine: LlamaEngine) -> None:
    async def main() -> tuple[tuple[int, int], tuple[int, int], int, LlamaSequence]:
        seq = await engine.open_sequence()
        await complete(engine, seq, chat(engine, PROMPTS[0]), max_tokens=8)
        slot = seq.slot
        assert slot is not None
        held = await engine.slot_cells(slot)
        await engine.close_sequence(seq)
        return held, await engine.slot_cells(slot), len(seq.tokens), seq

    held, after, tokens_left, seq = run(main)
    assert held[0] == 0 and held[1] > 0
    assert after == (-1, -1)  # llama_memory_seq_pos_max == -1: no cell left
    assert tokens_left == 0 and seq.slot is None and seq.closed


def test_identical_prompts_are_each_evaluated_in_their_own_cells(engine: LlamaEngine) -> None:
    prompt = chat(engine, PROMPTS[1])

    async def main() -> list[tuple[Out, int | None, tuple[int, int], int, int]]:
        seqs = [await engine.open_sequence() for _ in range(2)]
        outs = await asyncio.gather(*(complete(engine, s, prompt) for s in seqs))
        found = []
        for seq, out in zip(seqs, outs, strict=True):
            assert seq.slot is not None
            cells = await engine.slot_cells(seq.slot)
            found.append((out, seq.slot, cells, seq.evaluated, len(seq.tokens)))
        for seq in seqs:
            await engine.close_sequence(seq)
        return found

    (out_a, slot_a, cells_a, eval_a, held_a), (out_b, slot_b, cells_b, eval_b, held_b) = run(main)
    assert slot_a != slot_b
    # Each holds cells for every position from 0, and evaluated every one of them itself:
    # nothing was copied or shared from the other, though the prompt was the same.
    assert cells_a == (0, held_a - 1) and cells_b == (0, held_b - 1)
    assert eval_a == held_a >= len(prompt) and eval_b == held_b >= len(prompt)
    assert out_a == out_b


# --- parking in RAM --------------------------------------------------------------------------


def _open_files() -> set[str]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/"):
            found.add(target)
    return found


async def _conversations(engine: LlamaEngine, names: list[str]) -> dict[str, Any]:
    """Each name's session says its password, then (after all the others) asks for it."""
    question = "What is the password?"
    files_before = _open_files()
    seqs = [await engine.open_sequence() for _ in names]
    firsts = [f"The password is {n}. Remember it." for n in names]
    turn1 = [
        await complete(engine, seq, chat(engine, first), max_tokens=24)
        for seq, first in zip(seqs, firsts, strict=True)
    ]
    parked = [s for s in seqs if s.slot is None]
    state: dict[str, Any] = {
        "turn1": turn1,
        "parked_after_turn1": len(parked),
        "in_ram": all(s.saved is not None and 0 < s.saved_size <= len(s.saved) for s in parked),
        "files_before": files_before,
        "reevaluated": [],
    }
    turn2 = []
    for seq, first, out in zip(seqs, firsts, turn1, strict=True):
        held, evaluated = list(seq.tokens), seq.evaluated
        prompt = chat(engine, first, out.text, question)
        turn2.append(await complete(engine, seq, prompt, max_tokens=16))
        common = 0
        for x, y in zip(held, prompt, strict=False):
            if x != y:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        # what it decoded this turn beyond the prompt past what it held, and its answer
        state["reevaluated"].append(seq.evaluated - evaluated - (len(seq.tokens) - common))
    state.update(
        turn2=turn2,
        files_after=_open_files(),
        parked=[s.parked for s in seqs],
        restored=[s.restored for s in seqs],
    )
    for seq in seqs:
        await engine.close_sequence(seq)
    state["left_in_ram"] = [s.saved for s in seqs]
    return state


def test_more_sessions_than_slots_park_in_ram_and_resume(
    engine: LlamaEngine,
    model_spec: ModelSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [*PASSWORDS, "Corvina"]
    monkeypatch.chdir(tmp_path)  # a file written to a relative path would land here
    small = make_engine(model_spec, max_sequences=2)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        parking = await _conversations(small, names)
        await small.aclose()
        return parking, await _conversations(engine, names)  # 8 slots: nothing parks

    parking, reference = run(main)
    assert reference["parked"] == [0] * len(names)
    assert parking["parked_after_turn1"] == len(names) - 2 and parking["in_ram"]
    assert all(n >= 1 for n in parking["parked"]) and all(n >= 1 for n in parking["restored"])
    # Each resumed from its own restored cells (re-evaluating nothing) and answered
    # exactly as the same session did where it never left its slot.
    assert parking["reevaluated"] == [0] * len(names)
    assert (parking["turn1"], parking["turn2"]) == (reference["turn1"], reference["turn2"])
    for name, out in zip(PASSWORDS, parking["turn2"], strict=False):
        assert name in out.text
    # RAM only: no file opened or written while states were parked, and none kept
    assert parking["files_after"] == parking["files_before"] and not list(tmp_path.iterdir())
    assert parking["left_in_ram"] == [None] * len(names)


# --- the queue, fair turns, readers that go away, shutdown -----------------------------------


def test_past_the_queue_callers_get_engine_busy(model_spec: ModelSpec) -> None:
    engine = make_engine(model_spec, max_sequences=1, max_queue=1)

    async def main() -> tuple[str, Out]:
        running, waiting, refused = [await engine.open_sequence() for _ in range(3)]
        params = SamplingParams(max_tokens=500, temperature=0.0)
        first = await engine.generate(running, engine.text_tokens(COUNTING), params, Generation())
        await first.__anext__()
        second = asyncio.create_task(complete(engine, waiting, chat(engine, PROMPTS[0]), 8))
        await until(lambda: waiting.active)
        with pytest.raises(EngineBusy) as busy:
            await engine.generate(refused, chat(engine, PROMPTS[1]), params, Generation())
        await first.aclose()
        out = await second  # the waiting one gets the slot once the first is gone
        await engine.aclose()
        return str(busy.value), out

    message, out = run(main)
    assert "waiting" in message
    assert out.finish is not None and out.completion_tokens > 0


def test_a_long_prompt_does_not_stall_a_streaming_session(model_spec: ModelSpec) -> None:
    chunk = 32
    engine = make_engine(model_spec, prefill_chunk=chunk)
    long_prompt = chat(engine, long_text(45))

    async def main() -> tuple[int, int, Generation]:
        streaming, prefilling = await engine.open_sequence(), await engine.open_sequence()
        result = Generation()
        params = SamplingParams(max_tokens=600, temperature=0.0)
        stream = await engine.generate(streaming, engine.text_tokens(COUNTING), params, result)

        async def read() -> None:
            async for _ in stream:
                pass

        reader = asyncio.create_task(read())
        await until(lambda: result.completion_tokens >= 3)
        long_result = Generation()
        long_stream = await engine.generate(
            prefilling, long_prompt, SamplingParams(max_tokens=2, temperature=0.0), long_result
        )
        before = result.completion_tokens
        async for _ in long_stream:
            break
        during = result.completion_tokens - before
        await stream.aclose()
        reader.cancel()
        await engine.aclose()
        return during, len(long_prompt), result

    during, prompt_len, result = run(main)
    assert prompt_len > 10 * chunk
    # The long prompt took about prompt_len / chunk steps, and the streaming session got a
    # token in every one of them (a prompt prefilled in one go would have allowed ~1).
    assert during >= prompt_len // chunk - 2
    assert result.finish_reason is None  # it was still streaming: cut off by the test


def test_a_reader_that_goes_away_stops_decoding_at_once(model_spec: ModelSpec) -> None:
    engine = make_engine(model_spec, max_sequences=1, max_queue=0)

    async def main() -> dict[str, int]:
        seq = await engine.open_sequence()
        params = SamplingParams(max_tokens=1000, temperature=0.0)
        result = Generation()
        stream = await engine.generate(seq, engine.text_tokens(COUNTING), params, result)
        for _ in range(3):
            await stream.__anext__()
        at_close = result.completion_tokens
        await stream.aclose()
        assert seq.work is not None
        await seq.work.stopped
        after_close = result.completion_tokens
        # the one slot is free again: the next generation is accepted, not refused
        out = await complete(engine, seq, chat(engine, PROMPTS[0]), max_tokens=4)

        # a stream that is never read, then closed, and one that is just dropped
        unread = Generation()
        stream = await engine.generate(seq, engine.text_tokens(COUNTING), params, unread)
        await stream.aclose()
        await seq.work.stopped
        dropped = Generation()
        stream = await engine.generate(seq, engine.text_tokens(COUNTING), params, dropped)
        work = seq.work
        del stream
        gc.collect()
        await work.stopped
        await engine.aclose()
        return {
            "at_close": at_close,
            "after_close": after_close,
            "next": out.completion_tokens,
            "unread": unread.completion_tokens,
            "dropped": dropped.completion_tokens,
        }

    n = run(main)
    assert n["after_close"] <= n["at_close"] + 1  # at most the step that was under way
    assert n["next"] > 0
    assert n["unread"] <= 2 and n["dropped"] <= 2


def test_a_cancelled_generation_frees_its_queue_place_at_once(model_spec: ModelSpec) -> None:
    engine = make_engine(model_spec, max_sequences=1, max_queue=0)

    async def main() -> None:
        first, second = await engine.open_sequence(), await engine.open_sequence()
        params = SamplingParams(max_tokens=1000, temperature=0.0)
        stream = await engine.generate(first, engine.text_tokens(COUNTING), params, Generation())
        await stream.__anext__()  # the one place is taken: anyone else is refused
        with pytest.raises(EngineBusy):
            await engine.generate(second, [1, 2, 3], params, Generation())
        await stream.aclose()
        # No await in between: the scheduler has not run a step since the cancel, and
        # still the place is free.
        out = await engine.generate(second, engine.text_tokens("Hello"), params, Generation())
        await out.aclose()
        await engine.aclose()

    run(main)


def test_shutdown_ends_streams_in_flight_and_frees_the_model(model_spec: ModelSpec) -> None:
    engine = make_engine(model_spec, max_sequences=2, max_queue=2)

    async def main() -> list[BaseException | None]:
        seqs = [await engine.open_sequence() for _ in range(4)]
        params = SamplingParams(max_tokens=1000, temperature=0.0)
        streams = [
            await engine.generate(s, engine.text_tokens(COUNTING), params, Generation())
            for s in seqs
        ]
        await streams[0].__anext__()  # two run, two wait

        async def drain(stream: Any) -> BaseException | None:
            try:
                async for _ in stream:
                    pass
            except EngineError as exc:
                return exc
            return None

        readers = [asyncio.create_task(drain(s)) for s in streams]
        await engine.aclose()
        ended = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        for seq in seqs:
            await engine.close_sequence(seq)  # after shutdown: nothing left to free
        with pytest.raises(EngineError):
            await engine.generate(seqs[0], [1, 2, 3], params, Generation())
        with pytest.raises(EngineError, match="unloaded"):
            engine.tokenize("the vocabulary went with the model")
        assert all(s.closed and not s.tokens for s in seqs)
        return ended

    ended = run(main)
    assert all(isinstance(e, EngineError) and "shutting down" in str(e) for e in ended)


# --- settings ----------------------------------------------------------------------------------


def test_engine_settings_reach_the_engine(
    model_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "MAX_SEQUENCES": "3",
        "CONTEXT_SIZE": "512",
        "BATCH_SIZE": "96",
        "PREFILL_CHUNK": "24",
        "THREADS": "1",
        "MAX_QUEUE": "5",
        "FLASH_ATTN": "false",
    }.items():
        monkeypatch.setenv(f"SANCTUM_DP_ENGINE__{name}", value)
    config = engine_config(model_spec, Settings())
    engine = LlamaEngine(config)
    try:
        import llama_cpp as llama

        ctx = engine._ctx
        assert engine.n_slots == llama.llama_n_seq_max(ctx) == 3
        assert engine.info.context_size == llama.llama_n_ctx_seq(ctx) == 512
        assert llama.llama_n_batch(ctx) == 96
        assert llama.llama_n_threads(ctx) == 1
        assert (config.prefill_chunk, config.max_queue, config.flash_attn) == (24, 5, False)
    finally:
        asyncio.run(engine.aclose())
