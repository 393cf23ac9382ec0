"""The llama.cpp engine: one context per pinned model, decoding many sessions together.

One scheduler thread owns the llama.cpp context. Each open session holds a
:class:`LlamaSequence`; while it generates it is bound to one of the context's sequence
ids (a *slot*) and its KV cells live in that slot alone: nothing is shared between
slots, not even a common prefix. Every step puts the next token of every decoding
session, plus a chunk of any pending prompt, into one ``llama_batch`` and one
``llama_decode``; each session then samples from its own logits with its own sampler
chain (temperature, top_p, seed).

More sessions than slots: an idle session's KV state is copied to RAM
(``llama_state_seq_get_data``) and its slot freed; it is restored into a free slot when
it next generates. Nothing is ever written to disk. Past ``max_queue`` waiting
generations, callers get :class:`EngineBusy` (HTTP 429).

Only ids, counts and durations are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as llama

from data_plane.engine.base import (
    ContextOverflow,
    Engine,
    EngineBusy,
    EngineError,
    Generation,
    ModelInfo,
    SamplingParams,
    StopMatcher,
    TextDecoder,
)
from data_plane.engine.base import Sequence as BaseSequence
from data_plane.engine.chat_template import CHATML, ChatTemplate

logger = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False
_DONE = object()


def _init_backend() -> None:
    """Initialise llama.cpp once per process and keep its own logging quiet."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        # llama-cpp-python forwards llama.cpp's log to this logger; below ERROR it is
        # load-time chatter (and at debug level it could print token text).
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        llama.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class EngineConfig:
    """How to load one model (from the pin and the node's engine settings)."""

    path: str
    info: ModelInfo
    chat_template: str | None = None
    threads: int = 2
    n_gpu_layers: int = 0
    max_sequences: int = 8
    batch_size: int = 512
    max_queue: int = 64


@dataclass(eq=False)
class LlamaSequence(BaseSequence):
    """A session's sequence; ``slot`` is its llama.cpp seq id while it holds KV cells."""

    slot: int | None = None
    saved: bytes | None = None  # KV state parked in RAM while it has no slot
    active: bool = False
    work: _Work | None = None  # the latest generation, running or done
    last_used: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Work:
    """One generation in flight."""

    seq: LlamaSequence
    pending: list[int]
    params: SamplingParams
    result: Generation
    emit: Callable[[Any], None]
    stopped: asyncio.Future[None]  # resolved once the scheduler let go of the work
    sampler: Any = None
    next_token: int | None = None
    cancelled: bool = False
    finished: bool = False
    decoder: TextDecoder = field(default_factory=TextDecoder)
    stop: StopMatcher = field(init=False)

    def __post_init__(self) -> None:
        self.stop = StopMatcher(self.params.stop)


class LlamaEngine(Engine):
    """One pinned GGUF model on llama.cpp with a continuous-batching scheduler."""

    def __init__(self, config: EngineConfig) -> None:
        _init_backend()
        self.config = config
        mparams = llama.llama_model_default_params()
        mparams.n_gpu_layers = config.n_gpu_layers
        self._model = llama.llama_model_load_from_file(config.path.encode(), mparams)
        if not self._model:
            raise EngineError(f"llama.cpp could not load model {config.info.name}")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_slots = config.max_sequences
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = config.info.context_size * self.n_slots
        cparams.n_seq_max = self.n_slots
        cparams.n_batch = config.batch_size
        cparams.n_ubatch = config.batch_size
        cparams.n_threads = config.threads
        cparams.n_threads_batch = config.threads
        cparams.kv_unified = False  # each sequence its own KV stream: no shared cells
        cparams.no_perf = True
        self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama.llama_model_free(self._model)
            raise EngineError(f"llama.cpp could not create a context for {config.info.name}")
        self._mem = llama.llama_get_memory(self._ctx)
        self.n_ctx_seq = llama.llama_n_ctx_seq(self._ctx)
        self.info = ModelInfo(
            name=config.info.name,
            version=config.info.version,
            sha256=config.info.sha256,
            context_size=self.n_ctx_seq,
        )
        self._batch = llama.llama_batch_init(config.batch_size, 0, 1)
        self._bos = llama.llama_vocab_bos(self._vocab)
        self._add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self._template = ChatTemplate(
            config.chat_template or self._gguf_chat_template() or CHATML,
            bos_token=self._piece(self._bos, special=True).decode("utf-8", "replace"),
            eos_token=self._piece(llama.llama_vocab_eos(self._vocab), special=True).decode(
                "utf-8", "replace"
            ),
        )
        self._slots: list[LlamaSequence | None] = [None] * self.n_slots
        self._active: list[_Work] = []
        self._waiting: deque[_Work] = deque()
        self._commands: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._rr = 0  # round-robin start for prompt chunks
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{config.info.name}", daemon=True
        )
        self._thread.start()
        logger.info(
            "engine loaded model=%s slots=%d ctx_per_seq=%d batch=%d threads=%d",
            config.info.name,
            self.n_slots,
            self.n_ctx_seq,
            config.batch_size,
            config.threads,
        )

    @classmethod
    async def load(cls, config: EngineConfig) -> LlamaEngine:
        return await asyncio.to_thread(cls, config)

    # --- tokens and text ---------------------------------------------------------------

    def _gguf_chat_template(self) -> str | None:
        raw = llama.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (llama.llama_token * cap)()
        n = llama.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
        if n < 0:
            cap = -n
            arr = (llama.llama_token * cap)()
            n = llama.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
        return list(arr[:n])

    def _with_bos(self, tokens: list[int]) -> list[int]:
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            return [self._bos, *tokens]
        return tokens or [self._bos]

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self._with_bos(
            self._template.tokens(messages, lambda text, sp: self.tokenize(text, special=sp))
        )

    def text_tokens(self, prompt: str) -> list[int]:
        return self._with_bos(self.tokenize(prompt, special=False))

    # --- sequences ---------------------------------------------------------------------

    async def open_sequence(self) -> LlamaSequence:
        return LlamaSequence()

    async def close_sequence(self, seq: BaseSequence) -> None:
        assert isinstance(seq, LlamaSequence)
        await self._call(lambda: self._close(seq))

    def _close(self, seq: LlamaSequence) -> None:
        for work in [*self._active, *self._waiting]:
            if work.seq is seq:
                work.cancelled = True
        self._reap_cancelled()
        if seq.slot is not None:
            llama.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._slots[seq.slot] = None
            seq.slot = None
        seq.saved = None
        seq.tokens.clear()
        seq.closed = True

    async def slot_cells(self, slot: int) -> tuple[int, int]:
        """(min, max) KV position held by ``slot``; (-1, -1) when it holds no cells."""
        return await self._call(
            lambda: (
                llama.llama_memory_seq_pos_min(self._mem, slot),
                llama.llama_memory_seq_pos_max(self._mem, slot),
            )
        )

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the scheduler thread (which owns the context) and await it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def run() -> None:
            try:
                value = fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, value, None)

        with self._cond:
            if self._stopping:
                raise EngineError("engine is shutting down")
            self._commands.append(run)
            self._cond.notify()
        return await fut

    # --- generation --------------------------------------------------------------------

    async def generate(
        self,
        seq: BaseSequence,
        prompt: list[int],
        params: SamplingParams,
        result: Generation,
    ) -> AsyncGenerator[str, None]:
        assert isinstance(seq, LlamaSequence)
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.n_ctx_seq:
            raise ContextOverflow(len(prompt), self.n_ctx_seq)
        if seq.closed:
            raise EngineError("sequence is closed")
        previous = seq.work
        if previous is not None:
            # A cut-off generation is let go of at the scheduler's next step: wait for
            # that, so the session's next request doesn't find its sequence busy.
            await asyncio.shield(previous.stopped)
        result.prompt_tokens = len(prompt)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            # RuntimeError: the loop is gone (shutdown), so nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        work = _Work(
            seq=seq,
            pending=list(prompt),
            params=params,
            result=result,
            emit=emit,
            stopped=loop.create_future(),
        )
        with self._cond:
            if self._stopping:
                raise EngineError("engine is shutting down")
            if seq.active:
                raise EngineError("sequence is already generating")
            if len(self._waiting) >= self.config.max_queue:
                raise EngineBusy("too many generations are waiting for this model")
            seq.active = True
            seq.work = work
            self._waiting.append(work)
            self._cond.notify()
        return self._stream(work, queue)

    async def _stream(self, work: _Work, queue: asyncio.Queue[Any]) -> AsyncGenerator[str, None]:
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not work.finished:
                # The caller went away (client disconnect, cancel): stop decoding at once.
                with self._cond:
                    work.cancelled = True
                    self._cond.notify()

    # --- the scheduler thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._commands
                    and not self._active
                    and not self._waiting
                    and not self._stopping
                ):
                    self._cond.wait()
                commands = list(self._commands)
                self._commands.clear()
                stopping = self._stopping
            for command in commands:
                command()
            if stopping:
                self._fail_all(EngineError("engine is shutting down"))
                return
            self._reap_cancelled()
            self._admit()
            if self._active:
                try:
                    self._step()
                except Exception:
                    logger.exception("engine step failed model=%s", self.info.name)
                    self._fail_all(EngineError("inference failed"))

    def _reap_cancelled(self) -> None:
        for work in [w for w in self._active if w.cancelled]:
            self._finish(work, None)
        for work in [w for w in self._waiting if w.cancelled]:
            self._waiting.remove(work)
            self._finish(work, None)

    def _admit(self) -> None:
        """Move waiting generations into slots, parking idle sessions' KV in RAM."""
        while self._waiting:
            work = self._waiting[0]
            seq = work.seq
            if seq.slot is None:
                slot = self._free_slot()
                if slot is None:
                    return  # every slot is generating; wait for one to finish
                self._bind(seq, slot)
            self._waiting.popleft()
            self._start(work)

    def _free_slot(self) -> int | None:
        for slot, owner in enumerate(self._slots):
            if owner is None:
                return slot
        idle = [s for s in self._slots if s is not None and not s.active]
        if not idle:
            return None
        victim = min(idle, key=lambda s: s.last_used)
        assert victim.slot is not None
        freed = victim.slot
        size = llama.llama_state_seq_get_size(self._ctx, freed)
        buf = (ctypes.c_uint8 * size)()
        written = llama.llama_state_seq_get_data(self._ctx, buf, size, freed)
        victim.saved = bytes(buf[:written])
        llama.llama_memory_seq_rm(self._mem, freed, -1, -1)
        victim.slot = None
        self._slots[freed] = None
        logger.debug("parked idle sequence in RAM slot=%d bytes=%d", freed, written)
        return freed

    def _bind(self, seq: LlamaSequence, slot: int) -> None:
        llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
        if seq.saved is not None:
            data = (ctypes.c_uint8 * len(seq.saved)).from_buffer_copy(seq.saved)
            if llama.llama_state_seq_set_data(self._ctx, data, len(seq.saved), slot) == 0:
                seq.tokens.clear()  # restore failed: the prompt is evaluated afresh
            seq.saved = None
        seq.slot = slot
        self._slots[slot] = seq

    def _start(self, work: _Work) -> None:
        """Keep the KV cells of the matching prefix (this sequence's own), drop the rest."""
        seq, prompt = work.seq, work.pending
        assert seq.slot is not None
        keep = 0
        for a, b in zip(seq.tokens, prompt, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt) - 1)  # the last prompt token is decoded for logits
        if keep < len(seq.tokens):
            if not llama.llama_memory_seq_rm(self._mem, seq.slot, keep, -1):
                llama.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                keep = 0
            del seq.tokens[keep:]
        work.pending = prompt[keep:]
        work.sampler = self._sampler(work.params)
        self._active.append(work)

    def _sampler(self, params: SamplingParams) -> Any:
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if params.temperature <= 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        else:
            if params.top_p < 1.0:
                llama.llama_sampler_chain_add(
                    chain, llama.llama_sampler_init_top_p(params.top_p, 1)
                )
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(params.temperature))
            seed = llama.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
        return chain

    def _step(self) -> None:
        batch = self._batch
        n = 0
        sample_at: list[tuple[_Work, int]] = []

        def put(token: int, seq: LlamaSequence, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = len(seq.tokens)
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.slot
            batch.logits[n] = logits
            seq.tokens.append(token)
            n += 1

        # Every decoding session advances one token per step: fair turns by construction.
        for work in self._active:
            if work.next_token is not None:
                put(work.next_token, work.seq, True)
                sample_at.append((work, n - 1))
                work.next_token = None
        # Prompts share what is left of the batch, round robin, in bounded chunks so a
        # long prompt does not stall the sessions that are already streaming.
        prefilling = [w for w in self._active if w.pending]
        if prefilling:
            budget = self.config.batch_size - n
            share = max(16, budget // len(prefilling))
            start = self._rr % len(prefilling)
            self._rr += 1
            for work in prefilling[start:] + prefilling[:start]:
                take = min(len(work.pending), share, budget)
                if take <= 0:
                    break
                chunk, work.pending = work.pending[:take], work.pending[take:]
                for i, token in enumerate(chunk):
                    last = not work.pending and i == take - 1
                    put(token, work.seq, last)
                if not work.pending:
                    sample_at.append((work, n - 1))
                budget -= take
        batch.n_tokens = n
        rc = llama.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        for work, index in sample_at:
            token = llama.llama_sampler_sample(work.sampler, self._ctx, index)
            self._on_token(work, token)

    def _on_token(self, work: _Work, token: int) -> None:
        if llama.llama_vocab_is_eog(self._vocab, token):
            self._finish(work, "stop")
            return
        work.result.completion_tokens += 1
        text = work.stop.feed(work.decoder.feed(self._piece(token)))
        if text:
            work.emit(text)
        if work.stop.stopped:
            self._finish(work, "stop")
        elif work.result.completion_tokens >= work.params.max_tokens:
            self._finish(work, "length")
        elif len(work.seq.tokens) + 1 >= self.n_ctx_seq:
            self._finish(work, "length")  # no KV cell left for the next token
        else:
            work.next_token = token

    def _finish(self, work: _Work, reason: str | None) -> None:
        """End a generation; ``reason`` None means cancelled (nothing more is sent)."""
        if work.finished:
            return
        work.finished = True
        work.pending = []
        if work in self._active:
            self._active.remove(work)
        if work.sampler is not None:
            llama.llama_sampler_free(work.sampler)
            work.sampler = None
        work.seq.active = False
        work.seq.last_used = time.monotonic()
        loop = work.stopped.get_loop()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(_settle, work.stopped, None, None)
        if reason is None:
            return
        tail = work.stop.feed(work.decoder.flush()) + work.stop.flush()
        if tail:
            work.emit(tail)
        work.result.finish_reason = reason
        work.emit(_DONE)

    def _fail_all(self, error: EngineError) -> None:
        for work in [*self._active, *self._waiting]:
            if not work.finished:
                work.emit(error)
            work.cancelled = True
        self._waiting.clear()
        self._reap_cancelled()
        # A failed decode leaves the cells of that batch in doubt: start sequences over.
        for seq in self._slots:
            if seq is not None:
                seq.tokens.clear()
                assert seq.slot is not None
                llama.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)

    # --- shutdown ----------------------------------------------------------------------

    async def aclose(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        llama.llama_batch_free(self._batch)
        llama.llama_free(self._ctx)
        llama.llama_model_free(self._model)
        logger.info("engine unloaded model=%s", self.info.name)


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
