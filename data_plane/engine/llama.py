"""The llama.cpp engine: one context per pinned model, decoding many sessions together.

One scheduler thread owns the llama.cpp context (a courier thread hands what it makes
to the event loops: ``_carry``). Each open session holds a
:class:`LlamaSequence`; while it generates it is bound to one of the context's sequence
ids (a *slot*). The context keeps one KV stream per slot (``kv_unified=False``), so a
slot's cells are its own: nothing is shared between slots, not even a common prefix.

Every step puts the next token of every decoding session, then chunks of pending
prompts (round robin, at most ``prefill_chunk`` tokens while others decode or wait for
a slot, so a long prompt does not stall them), into one ``llama_batch`` and one
``llama_decode``;
each session then samples from its own logits with its own sampler chain (see
``_sampler``: the grammar of a constrained generation first (structured output:
:mod:`data_plane.engine.grammar`), then bias and penalties, then greedy at temperature
0, otherwise the cuts, temperature and a seeded draw), and, only if it asked for them,
reads the log-probabilities of its own logits row. Flash attention is on
by default: its CPU kernel walks each query's own keys in order and skips masked cells,
so a session's logits do not depend on which other sessions share the batch (greedy
output is the same alone or batched).

With speculation on, a decoding session may also put a draft of its next tokens, looked
up in its own history, into the room the step has left (:mod:`.speculation`); its
sampler picks each row in order and the first pick that differs ends its turn in the
step, the refused draft's cells removed (``_verify``). A one-token batch is rounded
differently from a larger one by llama.cpp's CPU kernels, so a near-tie may go either
way with or without drafts (docs/engine.md).

At most ``max_sequences`` generations run at once and ``max_queue`` more may wait for a
slot; past that, callers get :class:`EngineBusy` (HTTP 429). Each client has caps of its
own (:class:`ClientCaps`: running generations, queue places, parked RAM); a client at
its caps gets :class:`ClientBusy` while others are still admitted.

Slots are shared out client by client, not first come first served: the waiting client
with the fewest running generations goes first (ties: the one admitted longest ago).
When every slot is taken and a waiting client runs two or more generations fewer than
another, that other client's newest generation is *paused*: its KV state goes to RAM,
its slot to the waiting client, and it resumes (same sampler, same next token) when a
slot frees. With more clients than slots, a generation that has decoded
``time_slice_tokens`` tokens since it got its slot is paused the same way for a client
with none running that has waited as long.

When a waiting generation needs a slot and none is free, the least recently used idle
session's KV state is copied to RAM (``llama_state_seq_get_data``) and its slot freed;
the state is restored into a free slot when that session next generates. Parked state is
capped per client and per engine: past a cap, the oldest parked state is dropped and
its session evaluates its tokens afresh when it next runs (same output, more time).
Nothing is ever written to disk, and a parked state is zeroed when it is restored or
dropped.

Only ids, counts and durations are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as llama
import numpy as np

from data_plane.engine.base import (
    ClientBusy,
    ClientCaps,
    Constraint,
    ContextOverflow,
    Engine,
    EngineBusy,
    EngineError,
    EngineStats,
    Generation,
    ModelInfo,
    SamplingParams,
    StopMatcher,
    TextDecoder,
    TokenLogprob,
    UnsupportedSchema,
)
from data_plane.engine.base import Sequence as BaseSequence
from data_plane.engine.chat_template import CHATML, ChatTemplate
from data_plane.engine.grammar import GrammarFilter
from data_plane.engine.speculation import PromptLookup

logger = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False
_DONE = object()  # the generation ended normally
_STOPPED = object()  # the scheduler let go of the generation (settles ``stopped``)
# A logit bias at or below this bans the token (OpenAI: "-100 should result in a ban").
BAN_BIAS = -100.0


class _Logprobs(list[TokenLogprob]):
    """Queue item: log-probabilities of tokens whose text comes next in the queue (or has
    come: a token that ends inside a UTF-8 character brings no text of its own)."""


def _no_grammar_text(record: logging.LogRecord) -> bool:
    return "grammar" not in record.getMessage().lower()


def _init_backend() -> None:
    """Initialise llama.cpp once per process and keep its own logging quiet."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        # llama-cpp-python's log callback prints llama.cpp's messages straight to stderr
        # (not through our formatter) when this logger's level lets them through. Below
        # ERROR they are load-time chatter, and at debug level they could hold token text.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        # A grammar that fails to parse is reported at ERROR level with the grammar's
        # text, which holds a client's schema: those records never pass.
        logging.getLogger("llama-cpp-python").addFilter(_no_grammar_text)
        llama.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class EngineConfig:
    """How to load one model (from the pin and the node's engine settings)."""

    path: str
    info: ModelInfo  # context_size: tokens per sequence
    chat_template: str | None = None
    threads: int = 2
    n_gpu_layers: int = 0
    max_sequences: int = 8
    batch_size: int = 512
    prefill_chunk: int = 64
    max_queue: int = 64
    flash_attn: bool = True
    max_parked_bytes: int = 1 << 30  # KV state parked in RAM, all clients together
    time_slice_tokens: int = 256  # 0: a running generation is paused only for fair shares
    # Caps for a client whose config sets none (None: as many as the engine has).
    client_max_running: int | None = None
    client_max_queued: int = 16
    client_max_parked_bytes: int = 256 << 20
    grammar_cache: int = 64  # parsed grammars kept for reuse (each session gets a copy)
    speculation: str = "off"  # or "prompt_lookup": drafts from the session's own tokens
    max_draft: int = 8  # draft tokens one session may verify in a step


@dataclass(eq=False)
class LlamaSequence(BaseSequence):
    """A session's sequence; ``slot`` is its llama.cpp seq id while it holds KV cells."""

    slot: int | None = None
    saved: Any = None  # ctypes buffer: the KV state parked in RAM while it has no slot
    saved_size: int = 0
    active: bool = False  # a generation is queued or running
    work: _Work | None = None  # the latest generation, running or done
    last_used: float = field(default_factory=time.monotonic)
    evaluated: int = 0  # tokens decoded into this sequence's own cells, over its life
    parked: int = 0  # times its state was moved to RAM
    restored: int = 0  # times it was restored from RAM
    drafted: int = 0  # draft tokens decoded to be verified, over its life
    draft_taken: int = 0  # of those, the ones its sampler chose (kept in its cells)


@dataclass(eq=False)
class _Work:
    """One generation in flight."""

    seq: LlamaSequence
    pending: list[int]
    params: SamplingParams
    result: Generation
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    stopped: asyncio.Future[None]  # resolved once the scheduler let go of the work
    sampler: Any = None
    greedy: bool = False  # its chain is greedy alone: the argmax of its row (_sample)
    next_token: int | None = None
    lookup: PromptLookup | None = None  # its drafts, from its own tokens (speculation on)
    caps: ClientCaps | None = None
    cancelled: bool = False
    finished: bool = False
    counted: bool = True  # in the engine's in-flight count (the queue limit)
    paused: bool = False  # had a slot, gave it up: resumes where it stopped
    waiting_since: int = 0  # the scheduler step it (last) started waiting at
    arrived: int = 0  # the engine's generation count when it was queued
    slice_start: int = 0  # completion tokens when it (last) got its slot
    decoder: TextDecoder = field(default_factory=TextDecoder)
    stop: StopMatcher = field(init=False)
    # With logprobs: entries not yet handed out, each with the number of characters
    # of text decoded up to its token's end; handed out once the reader has that text.
    held_logprobs: deque[tuple[int, TokenLogprob]] = field(default_factory=deque)
    chars_decoded: int = 0
    chars_sent: int = 0

    def __post_init__(self) -> None:
        self.stop = StopMatcher(self.params.stop)


class _TokenStream(AsyncGenerator[str, None]):
    """The text of one generation, as it is decoded.

    Closing it, or dropping it, cancels the generation, even if it was never iterated
    (a plain async generator that never started would not run its ``finally``). Text
    that piled up while the reader was busy comes out as one chunk.
    """

    def __init__(self, engine: LlamaEngine, work: _Work) -> None:
        self._engine = engine
        self._work = work
        self._held: Any = None
        self._ended = False

    def __aiter__(self) -> _TokenStream:
        return self

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        queue = self._work.queue
        try:
            item = self._held if self._held is not None else await queue.get()
        except BaseException:  # cancelled while waiting: the reader is gone
            self._cancel()
            raise
        self._held = None
        while isinstance(item, _Logprobs):
            # Entries go to the result as their text comes out: a reader that has the
            # text of a chunk finds its tokens' entries in ``result.logprobs``.
            self._work.result.logprobs.extend(item)
            try:
                item = await queue.get()
            except BaseException:
                self._cancel()
                raise
        if item is _DONE:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        parts = [item]
        while not queue.empty():
            more = queue.get_nowait()
            if isinstance(more, str):
                parts.append(more)
            elif isinstance(more, _Logprobs):
                self._work.result.logprobs.extend(more)
            else:
                self._held = more
                break
        return "".join(parts)

    async def asend(self, value: None) -> str:
        return await self.__anext__()

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> str:
        self._cancel()
        raise val if val is not None else typ

    async def aclose(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        self._ended = True
        self._engine._cancel(self._work)

    def __del__(self) -> None:
        # Dropped without being closed: stop decoding at the next step. (A bare flag
        # write: no lock in a finalizer, and the scheduler is awake while work runs.)
        if not self._work.finished:
            self._work.cancelled = True
            self._engine._reap_due = True


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
        self.vocab_size = llama.llama_vocab_n_tokens(self._vocab)
        self.n_slots = config.max_sequences
        # Every decoding slot puts one token in a step, and a prompt needs room beside
        # them: the batch holds at least one token more than there are slots.
        self._batch_cap = max(config.batch_size, self.n_slots + 1)
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = config.info.context_size * self.n_slots
        cparams.n_seq_max = self.n_slots
        cparams.n_batch = self._batch_cap
        cparams.n_ubatch = self._batch_cap
        cparams.n_threads = config.threads
        cparams.n_threads_batch = config.threads
        cparams.kv_unified = False  # each sequence its own KV stream: no shared cells
        cparams.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if config.flash_attn
            else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
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
        self._batch = llama.llama_batch_init(self._batch_cap, 0, 1)
        self._vocab_users = threading.Condition()  # tokenize calls under way, for aclose
        self._tokenizing = 0
        self._closed = False
        self._bos = llama.llama_vocab_bos(self._vocab)
        self._add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self._pieces: dict[int, bytes] = {}
        # Parsed grammars by GBNF text, least recently used first; copied per session.
        self._grammars: OrderedDict[Constraint, Any] = OrderedDict()
        self._grammars_lock = threading.Lock()
        self._template = ChatTemplate(
            config.chat_template or self._gguf_chat_template() or CHATML,
            bos_token=self._piece(self._bos, special=True).decode("utf-8", "replace"),
            eos_token=self._piece(llama.llama_vocab_eos(self._vocab), special=True).decode(
                "utf-8", "replace"
            ),
        )
        self.default_caps = ClientCaps(
            max_running=config.client_max_running or self.n_slots,
            max_queued=config.client_max_queued,
            max_parked_bytes=config.client_max_parked_bytes,
        )
        # Scheduler state: touched only by the scheduler thread, except where noted.
        self._slots: list[LlamaSequence | None] = [None] * self.n_slots
        self._active: list[_Work] = []
        self._outbox: list[tuple[_Work, Any]] = []
        self._rr = 0  # round-robin start for prompt chunks
        self._steps = 0
        # Set (after a work's ``cancelled``) when one is cancelled; bare writes.
        self._reap_due = False
        self._running: dict[str, int] = {}  # active generations by client
        self._admitted_at: dict[str, int] = {}  # by client: its latest admission's number
        self._admissions = 0
        self._parked: dict[LlamaSequence, None] = {}  # parked states, oldest first
        self._parked_bytes = 0
        self._parked_by_client: dict[str, int] = {}
        self._parked_caps: dict[str, int] = {}  # by client, from its latest generation
        self._paused_count = 0
        self._dropped_count = 0
        # Shared with the event loop, under ``_cond``.
        self._waiting: dict[str, deque[_Work]] = {}  # by client, in arrival order
        self._commands: deque[Callable[[], None]] = deque()
        self._in_flight = 0  # generations queued or running
        self._in_flight_by_client: dict[str, int] = {}
        self._arrivals = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{config.info.name}", daemon=True
        )
        # What the scheduler hands the event loops goes by way of a courier (_carry).
        self._deliveries: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._courier = threading.Thread(
            target=self._carry, name=f"engine-courier-{config.info.name}", daemon=True
        )
        self._courier.start()
        self._thread.start()
        logger.info(
            "engine loaded model=%s slots=%d ctx_per_seq=%d batch=%d prefill_chunk=%d "
            "threads=%d flash_attn=%s queue=%d",
            config.info.name,
            self.n_slots,
            self.n_ctx_seq,
            self._batch_cap,
            config.prefill_chunk,
            config.threads,
            config.flash_attn,
            config.max_queue,
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

    def _text_piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        with self._using_vocab():
            data = text.encode("utf-8")
            cap = len(data) + 8
            arr = (llama.llama_token * cap)()
            n = llama.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
            if n < 0:
                cap = -n
                arr = (llama.llama_token * cap)()
                n = llama.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
            return list(arr[:n])

    @contextlib.contextmanager
    def _using_vocab(self) -> Iterator[None]:
        # Prompt workers tokenize (and parse grammars) on their own threads: each call
        # holds the vocabulary in use, and ``aclose`` frees the model only once no call
        # holds it.
        with self._vocab_users:
            if self._closed:  # the vocabulary went with the model
                raise EngineError("the model was unloaded")
            self._tokenizing += 1
        try:
            yield
        finally:
            with self._vocab_users:
                self._tokenizing -= 1
                self._vocab_users.notify_all()

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

    async def open_sequence(self, client: str = "") -> LlamaSequence:
        return LlamaSequence(client=client)

    async def close_sequence(self, seq: BaseSequence) -> None:
        assert isinstance(seq, LlamaSequence)
        try:
            await self._call(lambda: self._close(seq))
        except _EngineStopped:
            # The context is gone, and every cell with it; what is left is in RAM.
            _wipe(seq)
            seq.tokens.clear()
            seq.closed = True

    def _close(self, seq: LlamaSequence) -> None:
        for work in self._works():
            if work.seq is seq:
                self._finish(work, None, EngineError("generation cancelled: the session ended"))
        if seq.slot is not None:
            llama.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._slots[seq.slot] = None
            seq.slot = None
        self._unpark(seq)
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
            value, error = None, None
            try:
                value = fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                error = exc
            # By the courier, after the output of the steps before it (_carry).
            self._deliveries.put(functools.partial(_post, loop, _settle, fut, value, error))

        with self._cond:
            if self._stopping:
                raise _EngineStopped("engine is shutting down")
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
        caps: ClientCaps | None = None,
    ) -> AsyncGenerator[str, None]:
        assert isinstance(seq, LlamaSequence)
        caps = caps or self.default_caps
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
        loop = asyncio.get_running_loop()
        work = _Work(
            seq=seq,
            pending=list(prompt),
            params=params,
            result=result,
            loop=loop,
            queue=asyncio.Queue(),
            stopped=loop.create_future(),
            caps=caps,
        )
        client = seq.client
        with self._cond:
            if self._stopping:
                raise EngineError("engine is shutting down")
            if seq.closed:  # the session ended while its previous turn was let go of
                raise EngineError("sequence is closed")
            if seq.active:
                raise EngineError("sequence is already generating")
            mine = self._in_flight_by_client.get(client, 0)
            places = min(caps.max_running, self.n_slots) + caps.max_queued
            if mine >= places:
                raise ClientBusy(
                    f"this client has {mine} generations running or waiting for model "
                    f"{self.info.name}, its limit"
                )
            # A full model queue refuses clients that already have generations in it;
            # one with none still gets a place, so a few clients can't shut out the
            # rest (in all, at most one place more per client).
            if mine and self._in_flight >= self.n_slots + self.config.max_queue:
                raise EngineBusy("too many generations are waiting for this model")
            result.prompt_tokens = len(prompt)
            self._in_flight += 1
            self._arrivals += 1
            work.arrived = self._arrivals
            self._in_flight_by_client[client] = mine + 1
            self._parked_caps[client] = caps.max_parked_bytes
            seq.active = True
            seq.work = work
            work.waiting_since = self._steps
            self._waiting.setdefault(client, deque()).append(work)
            self._cond.notify()
        return _TokenStream(self, work)

    def _cancel(self, work: _Work) -> None:
        with self._cond:
            if not work.finished and not work.cancelled:
                work.cancelled = True
                self._reap_due = True
                # Its place counts as free now; its slot is let go of at the next step.
                self._uncount(work)
                self._cond.notify()

    def _uncount(self, work: _Work) -> None:
        if work.counted:  # under ``_cond``
            work.counted = False
            self._in_flight -= 1
            client = work.seq.client
            left = self._in_flight_by_client.get(client, 0) - 1
            if left > 0:
                self._in_flight_by_client[client] = left
            else:
                self._in_flight_by_client.pop(client, None)

    def stats(self) -> EngineStats:
        """The scheduler's counts now (read from any thread; a step may be under way)."""
        with self._cond:
            waiting = {c: len(q) for c, q in self._waiting.items() if q}
        return EngineStats(
            slots=self.n_slots,
            slots_busy=sum(1 for s in self._slots if s is not None),
            running={c: n for c, n in dict(self._running).items() if n},
            waiting=waiting,
            parked_bytes=self._parked_bytes,
            parked_bytes_by_client={c: n for c, n in dict(self._parked_by_client).items() if n},
            parked_sequences=len(self._parked),
            paused=self._paused_count,
            parked_dropped=self._dropped_count,
        )

    # --- the scheduler thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._commands
                    and not self._active
                    and not any(self._waiting.values())
                    and not self._stopping
                ):
                    self._cond.wait()
                commands = list(self._commands)
                self._commands.clear()
                stopping = self._stopping
            try:
                for command in commands:
                    command()
                if stopping:
                    self._fail_all("engine is shutting down")
                    return
                self._reap_cancelled()
                self._admit()
                if self._active:
                    self._step()
                    self._steps += 1
            except Exception:
                logger.exception("engine step failed model=%s", self.info.name)
                self._fail_all("inference failed")
            finally:
                self._flush()

    def _flush(self) -> None:
        """Hand this step's text and endings to the courier: one wake-up per loop."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Work, Any]]] = {}
        for work, item in self._outbox:
            by_loop.setdefault(work.loop, []).append((work, item))
        self._outbox = []
        for loop, items in by_loop.items():
            self._deliveries.put(functools.partial(_post, loop, _deliver, items))

    def _carry(self) -> None:
        """The courier: wakes the event loops with what the scheduler hands them (each
        step's output, each command's result), in the order it was handed over.

        Not done by the scheduler itself: the wake-up is a system call, which lets go of
        the GIL, and the woken loop takes it; the scheduler would then wait for the loop
        to finish its work (the chunks it frames and writes) before it could start its
        next decode. From this thread, that work overlaps the decode instead (the
        scheduler hands over with a queue put, which keeps the GIL)."""
        while (deliver := self._deliveries.get()) is not None:
            deliver()

    def _works(self) -> list[_Work]:
        """Every unfinished generation, running ones first."""
        with self._cond:  # the event loop appends to ``_waiting``
            return [*self._active, *(w for q in self._waiting.values() for w in q)]

    def _reap_cancelled(self) -> None:
        if not self._reap_due:
            return
        self._reap_due = False  # before the look: a cancel after it sets it again
        for work in [w for w in self._works() if w.cancelled]:
            self._finish(work, None)

    def _admit(self) -> None:
        """Give free slots to waiting generations, client by client (see the module's
        docstring); park idle sessions, or pause another client's generation, to free
        one."""
        if not self._waiting:  # (read without the lock: a newcomer is seen next step)
            return
        out_of_slots = False
        paused_now: set[str] = set()  # clients paused in this pass wait for free slots
        while True:
            with self._cond:
                heads = {c: q[0] for c, q in self._waiting.items() if q}
            # Fewest running first; among equals, the client admitted longest ago.
            order = sorted(
                heads, key=lambda c: (self._running.get(c, 0), self._admitted_at.get(c, -1))
            )
            for client in order:
                work = heads[client]
                assert work.caps is not None
                if self._running.get(client, 0) >= work.caps.max_running:
                    continue
                if work.seq.slot is None:
                    if out_of_slots:
                        continue
                    slot = self._free_slot()
                    if slot is None and client not in paused_now:
                        slot = self._pause_for(client, work, paused_now)
                    if slot is None:
                        out_of_slots = True
                        continue
                    self._bind(work.seq, slot)
                self._take(work)
                break
            else:
                return  # a whole pass admitted nobody

    def _take(self, work: _Work) -> None:
        """Move ``work`` (its sequence holds a slot) from its queue to the running set."""
        client = work.seq.client
        with self._cond:
            queue = self._waiting[client]
            queue.remove(work)
            if not queue:
                del self._waiting[client]
        if work.paused:
            work.paused = False
            self._active.append(work)  # its sampler and next token are as it left them
        else:
            self._start(work)
        self._running[client] = self._running.get(client, 0) + 1
        self._admissions += 1
        self._admitted_at[client] = self._admissions
        work.slice_start = work.result.completion_tokens

    def _free_slot(self) -> int | None:
        """A free slot, or one freed by parking the least recently used session that
        holds a slot without running: an idle one first, then one whose next turn waits
        (its client at its running cap), so a capped client can't sit on slots."""
        for slot, owner in enumerate(self._slots):
            if owner is None:
                return slot
        holders = [s for s in self._slots if s is not None and (not s.active or self._held_up(s))]
        if not holders:
            return None
        victim = min(holders, key=lambda s: (s.active, s.last_used))
        freed = victim.slot
        assert freed is not None
        self._park(victim, freed)
        return freed

    def _held_up(self, seq: LlamaSequence) -> bool:
        """``seq``'s next turn waits and won't run soon: its client is at its running
        cap, or the turn is behind others of its client."""
        work = seq.work
        if work is None or work.finished or work in self._active:
            return False
        assert work.caps is not None
        if self._running.get(seq.client, 0) >= work.caps.max_running:
            return True
        with self._cond:
            queue = self._waiting.get(seq.client)
            return queue is not None and bool(queue) and queue[0] is not work

    def _pause_for(self, client: str, waiting: _Work, paused_now: set[str]) -> int | None:
        """Pause another client's running generation so ``client`` gets a slot, when
        fairness asks for it; returns the slot it freed."""
        mine = self._running.get(client, 0)
        victim: _Work | None = None
        most = max(self._active, key=lambda w: self._running[w.seq.client], default=None)
        if most is not None and self._running[most.seq.client] >= mine + 2:
            # A fair share: the other client's latest arrival gives way (always the same
            # one while it waits, not whichever resumed last), if its state can be
            # parked under the caps rather than thrown away and evaluated again.
            rich = most.seq.client
            candidates = sorted(
                (w for w in self._active if w.seq.client == rich), key=lambda w: -w.arrived
            )
            victim = next((w for w in candidates if self._parks_whole(w.seq)), None)
        elif (
            mine == 0
            and self.config.time_slice_tokens > 0
            and self._steps - waiting.waiting_since >= self.config.time_slice_tokens
        ):
            # More clients than slots: the longest-running slice gives way.
            ran = [
                w
                for w in self._active
                if w.result.completion_tokens - w.slice_start >= self.config.time_slice_tokens
            ]
            if ran:
                victim = max(ran, key=lambda w: w.result.completion_tokens - w.slice_start)
        if victim is None or not self._parks_whole(victim.seq):
            return None
        slot = victim.seq.slot
        assert slot is not None
        self._active.remove(victim)
        owner = victim.seq.client
        self._running[owner] -= 1
        victim.paused = True
        victim.waiting_since = self._steps
        with self._cond:
            self._waiting.setdefault(owner, deque()).appendleft(victim)
        self._park(victim.seq, slot)
        self._paused_count += 1
        paused_now.add(owner)
        logger.debug("generation paused for another client's turn slot=%d", slot)
        return slot

    def _parks_whole(self, seq: LlamaSequence) -> bool:
        """Whether ``seq``'s state would fit under its client's parked cap and the
        engine's (however much else had to be dropped to make room)."""
        assert seq.slot is not None
        size = llama.llama_state_seq_get_size(self._ctx, seq.slot)
        cap = self._parked_caps.get(seq.client, self.default_caps.max_parked_bytes)
        return size <= min(cap, self.config.max_parked_bytes)

    def _park(self, seq: LlamaSequence, slot: int) -> None:
        """Copy a sequence's KV state to RAM and free its slot (an idle session's, or a
        paused generation's); then hold parked RAM to its caps."""
        size = llama.llama_state_seq_get_size(self._ctx, slot)
        buf = (ctypes.c_uint8 * max(size, 1))()
        written = llama.llama_state_seq_get_data(self._ctx, buf, size, slot) if size else 0
        llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
        seq.slot = None
        self._slots[slot] = None
        if written:
            seq.saved, seq.saved_size = buf, written
            seq.parked += 1
            self._parked[seq] = None
            self._parked_bytes += len(buf)
            self._parked_by_client[seq.client] = self._parked_by_client.get(seq.client, 0) + len(
                buf
            )
        else:
            ctypes.memset(buf, 0, len(buf))  # whatever a failed copy left behind
            self._lost_cells(seq)  # nothing saved: its tokens are evaluated afresh
        logger.debug("sequence parked in RAM slot=%d bytes=%d", slot, written)
        self._hold_parked_caps(seq.client)

    def _hold_parked_caps(self, client: str) -> None:
        """Drop the oldest parked states past the client's cap; then, past the engine's,
        the oldest of whichever client holds the most (a client churning sessions of
        its own pushes out its own states, not others')."""
        cap = self._parked_caps.get(client, self.default_caps.max_parked_bytes)
        while self._parked_by_client.get(client, 0) > cap:
            self._drop_parked(next(s for s in self._parked if s.client == client))
        while self._parked_bytes > self.config.max_parked_bytes:
            most = max(self._parked_by_client, key=lambda c: self._parked_by_client[c])
            self._drop_parked(next(s for s in self._parked if s.client == most))

    def _drop_parked(self, seq: LlamaSequence) -> None:
        self._unpark(seq)
        self._lost_cells(seq)
        self._dropped_count += 1
        logger.debug("parked state dropped for the RAM cap")

    def _unpark(self, seq: LlamaSequence) -> None:
        """Zero and release a parked state, and stop counting it."""
        if seq in self._parked:
            del self._parked[seq]
            size = len(seq.saved)
            self._parked_bytes -= size
            left = self._parked_by_client.get(seq.client, 0) - size
            if left > 0:
                self._parked_by_client[seq.client] = left
            else:
                self._parked_by_client.pop(seq.client, None)
        _wipe(seq)

    def _lost_cells(self, seq: LlamaSequence) -> None:
        """``seq`` holds no cells and no parked state any more: what it held is evaluated
        again when it next runs. A paused generation replays its tokens so far (prompt,
        and what it generated) and then goes on from where it stopped."""
        work = seq.work
        if work is not None and work.paused and not work.finished:
            replay = [*seq.tokens, *work.pending]
            if work.next_token is not None:
                replay.append(work.next_token)  # sampled and sent, never decoded
                work.next_token = None
            work.pending = replay
        seq.tokens.clear()

    def _bind(self, seq: LlamaSequence, slot: int) -> None:
        llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
        if seq.saved is not None:
            read = llama.llama_state_seq_set_data(self._ctx, seq.saved, seq.saved_size, slot)
            self._unpark(seq)
            held = llama.llama_memory_seq_pos_max(self._mem, slot) + 1
            if read == 0 or held != len(seq.tokens):
                # Restore failed: start the sequence over (its tokens are evaluated afresh).
                llama.llama_memory_seq_rm(self._mem, slot, -1, -1)
                self._lost_cells(seq)
            else:
                seq.restored += 1
            logger.debug("sequence restored from RAM slot=%d ok=%s", slot, read != 0)
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
        work.greedy = work.params.constraint is None and work.params.raw_greedy()
        self._active.append(work)

    def _sampler(self, params: SamplingParams) -> Any:
        """The generation's own sampler chain, in llama-server's order.

        Constraints first (they decide which tokens may come at all), then the logit
        bias, then the penalties over the tokens generated so far; at temperature 0 the
        likeliest token that is left; otherwise top_k, typical_p, top_p, min_p cut the
        candidates, temperature shapes what is left, and a seeded draw picks one. A
        sampler whose parameter has its neutral value is left out of the chain, so a
        request that sets none costs what it did before.
        """
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())

        def add(sampler: Any) -> None:
            llama.llama_sampler_chain_add(chain, sampler)

        self._add_constraint(chain, params)  # first: it filters what the rest sees
        if params.logit_bias:
            biases = (llama.llama_logit_bias * len(params.logit_bias))()
            for entry, (token, bias) in zip(biases, params.logit_bias, strict=True):
                entry.token = token
                entry.bias = float("-inf") if bias <= BAN_BIAS else bias
            add(llama.llama_sampler_init_logit_bias(self.vocab_size, len(biases), biases))
        if params.penalised():
            last_n = self.n_ctx_seq if params.penalty_last_n < 0 else params.penalty_last_n
            # The binding names a first argument (n_vocab) that this build reads as well:
            # checked against the library (the window is the second argument).
            add(
                llama.llama_sampler_init_penalties(
                    self.vocab_size,
                    last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.temperature <= 0:
            add(llama.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            add(llama.llama_sampler_init_top_k(params.top_k))
        if params.typical_p < 1.0:
            add(llama.llama_sampler_init_typical(params.typical_p, 1))
        if params.top_p < 1.0:
            add(llama.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama.llama_sampler_init_min_p(params.min_p, 1))
        add(llama.llama_sampler_init_temp(params.temperature))
        seed = llama.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(llama.llama_sampler_init_dist(seed))
        return chain

    # --- constrained decoding ----------------------------------------------------------

    def prepare_constraint(self, constraint: Constraint) -> None:
        with self._using_vocab(), self._grammars_lock:
            self._parsed(constraint)

    def _parsed(self, constraint: Constraint) -> Any:
        """The parsed grammar of ``constraint``, from the cache or parsed now (the
        least recently used one goes past the cache's size); under ``_grammars_lock``.
        Each session samples with a copy of its own."""
        parsed = self._grammars.get(constraint)
        if parsed is None:
            parsed = llama.llama_sampler_init_grammar(
                self._vocab, constraint.gbnf.encode(), constraint.root.encode()
            )
            if not parsed:
                raise UnsupportedSchema("")
            self._grammars[constraint] = parsed
            while len(self._grammars) > max(1, self.config.grammar_cache):
                _, old = self._grammars.popitem(last=False)
                llama.llama_sampler_free(old)
        self._grammars.move_to_end(constraint)
        return parsed

    def _add_constraint(self, chain: Any, params: SamplingParams) -> None:
        if params.constraint is None:
            return
        with self._grammars_lock:
            # Checked when the request came (prepare_constraint): it parses again if
            # it was pushed out of the cache since.
            grammar = llama.llama_sampler_clone(self._parsed(params.constraint))
        # Greedy: the filter's exact shortcut holds while the greedy choice follows the
        # logits as the model gave them (no bias or penalty reshapes them after it).
        gate = GrammarFilter(grammar, greedy=params.raw_greedy())
        llama.llama_sampler_chain_add(chain, gate.sampler)

    def _token_logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """The model's log-probability of ``token`` and of the ``top`` likeliest tokens at
        batch row ``index``: a log-softmax of the row's raw logits, before any sampler
        (bias, penalties, temperature, cuts), as OpenAI reports them."""
        row = self._logits_row(index)
        peak = float(row.max())
        norm = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
        best: tuple[tuple[bytes, float], ...] = ()
        if top > 0:
            ids = np.argpartition(row, -top)[-top:]
            ids = ids[np.argsort(-row[ids], kind="stable")]
            best = tuple((self._text_piece(int(i)), float(row[i]) - norm) for i in ids)
        return TokenLogprob(self._text_piece(token), float(row[token]) - norm, best)

    def _step(self) -> None:
        batch = self._batch
        tokens, pos, n_seq_id, seq_id, logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        n = 0
        sample_at: list[tuple[_Work, int]] = []
        decoding: list[tuple[_Work, int]] = []  # (work, its row), for drafts
        # Every decoding session advances one token per step: fair turns by construction.
        for work in self._active:
            token = work.next_token
            if token is None:
                continue
            seq = work.seq
            tokens[n], pos[n], n_seq_id[n], logits[n] = token, len(seq.tokens), 1, True
            seq_id[n][0] = seq.slot
            seq.tokens.append(token)
            seq.evaluated += 1
            sample_at.append((work, n))
            decoding.append((work, n))
            work.next_token = None
            n += 1
        # Prompts share what is left, round robin; while others decode or wait for a
        # slot, at most ``prefill_chunk`` tokens a step, so a long prompt (or a wave of
        # new ones) does not stall them: a step stays short, and a client that arrives
        # meanwhile gets its turn at the next one.
        prefilling = [w for w in self._active if w.pending]
        if prefilling:
            budget = self._batch_cap - n
            with self._cond:  # (not those held back by their own client's cap)
                others_wait = any(
                    q and self._running.get(c, 0) < (q[0].caps or self.default_caps).max_running
                    for c, q in self._waiting.items()
                )
            if n or others_wait:
                budget = min(budget, max(1, self.config.prefill_chunk))
            start = self._rr % len(prefilling)
            self._rr += 1
            order = prefilling[start:] + prefilling[:start]
            share = max(1, -(-budget // len(order)))
            for work in order:
                take = min(len(work.pending), share, budget)
                if take <= 0:
                    break
                seq = work.seq
                chunk, work.pending = work.pending[:take], work.pending[take:]
                p = len(seq.tokens)
                for token in chunk:
                    tokens[n], pos[n], n_seq_id[n], logits[n] = token, p, 1, False
                    seq_id[n][0] = seq.slot
                    n += 1
                    p += 1
                seq.tokens.extend(chunk)
                seq.evaluated += take
                if not work.pending:
                    logits[n - 1] = True
                    sample_at.append((work, n - 1))
                budget -= take
        # Drafts take only the room the step has left (speculation.py): each drafted
        # session's tokens follow its own, with logits on every one.
        drafts: dict[_Work, list[int]] = {}
        room = self._batch_cap - n
        for work, _ in decoding:
            if room <= 0:
                break
            draft = self._draft(work, room)
            if not draft:
                continue
            seq = work.seq
            p = len(seq.tokens)
            for token in draft:
                tokens[n], pos[n], n_seq_id[n], logits[n] = token, p, 1, True
                seq_id[n][0] = seq.slot
                n += 1
                p += 1
            seq.tokens.extend(draft)
            drafts[work] = list(range(n - len(draft), n))
            room -= len(draft)
        batch.n_tokens = n
        rc = llama.llama_decode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        for work, index in sample_at:
            rows = drafts.get(work)
            if rows is not None:
                self._verify(work, [index, *rows])
                continue
            self._on_token(work, self._sample(work, index), index)

    def _sample(self, work: _Work, index: int) -> int:
        """``work``'s next token from batch row ``index``, picked by its sampler chain.

        A chain that is greedy alone picks the likeliest token, the first of equal ones:
        that is read here straight from the row. ``llama_sampler_sample`` would first copy
        the whole vocabulary into the chain's candidate array and run the chain: measured
        here 96 us a token this way against 122 (reading the row, fresh from the decode's
        threads, is most of what is left). A NaN in the row goes to the chain (argmax
        would pick it; llama.cpp's greedy sampler does not)."""
        if work.greedy:
            row = self._logits_row(index)
            best = int(row.argmax())
            if not np.isnan(row[best]):
                return best
        return int(llama.llama_sampler_sample(work.sampler, self._ctx, index))

    def _logits_row(self, index: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Batch row ``index``'s raw logits, a view of llama.cpp's buffer (valid until the
        next decode)."""
        return np.ctypeslib.as_array(
            llama.llama_get_logits_ith(self._ctx, index), shape=(self.vocab_size,)
        )

    def _draft(self, work: _Work, room: int) -> list[int]:
        """Tokens to verify after ``work``'s next one (already in its token list), from
        its own history only; at most ``room``, and never past its max_tokens or its
        context."""
        if self.config.speculation != "prompt_lookup":
            return []
        seq = work.seq
        limit = min(
            room,
            self.config.max_draft,
            # The row of its next token yields one token; each draft token one more.
            work.params.max_tokens - work.result.completion_tokens - 1,
            # Positions stay where decoding one token at a time would reach.
            self.n_ctx_seq - 1 - len(seq.tokens),
        )
        if limit <= 0:
            return []
        if work.lookup is None:
            work.lookup = PromptLookup(self.config.max_draft)
        work.lookup.sync(seq.tokens)
        if len(work.lookup.tokens) != len(seq.tokens):
            return []  # (not caught up with a replayed history)
        return work.lookup.draft(limit)

    def _verify(self, work: _Work, rows: list[int]) -> None:
        """Sample ``work``'s rows in order, as one token a step would: row 0 holds the
        logits after its next token, row r after draft token r. While the sampler picks
        the draft's next token, that token is already decoded and the next row holds
        what comes after it; the first pick that differs (or ends the generation, or
        comes from the last row) is where it stops. The draft's cells past that are
        removed, so the sequence's cells and tokens are what they would have been
        without the draft.

        Exact for every sampler chain: each row is sampled with the generation's own
        chain, in the order and from the same state as without a draft (its grammar,
        penalties and random draws advance once per chosen token). With temperature > 0
        this is the standard acceptance rule for a draft proposed with probability 1:
        the draft token is kept with its probability p(x) under the request's sampling,
        and otherwise the token drawn is one from p with x left out, renormalised."""
        seq, lookup = work.seq, work.lookup
        assert lookup is not None
        drafted = len(rows) - 1
        draft = seq.tokens[len(seq.tokens) - drafted :]
        del seq.tokens[len(seq.tokens) - drafted :]
        taken = 0
        for r, index in enumerate(rows):
            token = self._sample(work, index)
            self._on_token(work, token, index)
            if work.finished or r == drafted or token != draft[r]:
                break
            work.next_token = None  # decoded already, at this row
            seq.tokens.append(token)
            seq.evaluated += 1
            taken += 1
        seq.drafted += drafted
        seq.draft_taken += taken
        lookup.verified(drafted, taken)
        if taken < drafted:
            assert seq.slot is not None
            if not llama.llama_memory_seq_rm(self._mem, seq.slot, len(seq.tokens), -1):
                raise EngineError("could not remove a refused draft's cells")

    def _on_token(self, work: _Work, token: int, index: int) -> None:
        if llama.llama_vocab_is_eog(self._vocab, token):
            self._finish(work, "stop")
            return
        work.result.completion_tokens += 1
        decoded = work.decoder.feed(self._text_piece(token))
        if work.params.logprobs is not None:
            work.chars_decoded += len(decoded)
            entry = self._token_logprob(index, token, work.params.logprobs)
            work.held_logprobs.append((work.chars_decoded, entry))
        text = work.stop.feed(decoded)
        self._send(work, text)
        if work.stop.stopped:
            self._finish(work, "stop")
        elif work.result.completion_tokens >= work.params.max_tokens:
            self._finish(work, "length")
        elif len(work.seq.tokens) + 1 >= self.n_ctx_seq:
            self._finish(work, "length")  # no KV cell left for the next token
        else:
            work.next_token = token

    def _send(self, work: _Work, text: str) -> None:
        """Queue ``text`` for the reader, after the log-probabilities of the tokens whose
        text it completes."""
        if work.params.logprobs is not None:
            work.chars_sent += len(text)
            ready = _Logprobs()
            while work.held_logprobs and work.held_logprobs[0][0] <= work.chars_sent:
                ready.append(work.held_logprobs.popleft()[1])
            if ready:
                self._outbox.append((work, ready))
        if text:
            self._outbox.append((work, text))

    def _finish(self, work: _Work, reason: str | None, error: EngineError | None = None) -> None:
        """End a generation: ``reason`` "stop" or "length", or None when it was cut off
        (then its reader, if one is still there, gets ``error``)."""
        if work.finished:
            return
        work.finished = True
        work.pending = []
        client = work.seq.client
        if work in self._active:
            self._active.remove(work)
            self._running[client] -= 1
            if not self._running[client]:
                del self._running[client]
        with self._cond:
            queue = self._waiting.get(client)
            if queue is not None and work in queue:
                queue.remove(work)
                if not queue:
                    del self._waiting[client]
            self._uncount(work)
        if work.sampler is not None:
            llama.llama_sampler_free(work.sampler)
            work.sampler = None
        work.lookup = None
        work.seq.active = False
        work.seq.last_used = time.monotonic()
        if reason is None:
            self._outbox.append((work, error or EngineError("generation cancelled")))
        else:
            tail = work.stop.feed(work.decoder.flush()) + work.stop.flush()
            self._send(work, tail)
            work.held_logprobs.clear()  # tokens of a stop string: not in the answer
            work.result.finish_reason = reason
            self._outbox.append((work, _DONE))
        self._outbox.append((work, _STOPPED))

    def _fail_all(self, message: str) -> None:
        for work in self._works():
            self._finish(work, None, EngineError(message))
        # A failed decode leaves the cells of that batch in doubt: start sequences over.
        for seq in self._slots:
            if seq is not None:
                assert seq.slot is not None
                llama.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
                seq.tokens.clear()

    # --- shutdown ----------------------------------------------------------------------

    async def aclose(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        self._deliveries.put(None)  # after the scheduler's last output
        await asyncio.to_thread(self._courier.join)
        for seq in self._slots:
            if seq is not None:
                seq.slot = None
        # No call into the model after this: new tokenize calls are refused, and those
        # under way on prompt workers finish first.
        await asyncio.to_thread(self._stop_tokenizing)
        with self._grammars_lock:
            for parsed in self._grammars.values():
                llama.llama_sampler_free(parsed)
            self._grammars.clear()
        llama.llama_batch_free(self._batch)
        llama.llama_free(self._ctx)
        llama.llama_model_free(self._model)
        logger.info("engine unloaded model=%s", self.info.name)

    def _stop_tokenizing(self) -> None:
        with self._vocab_users:
            self._closed = True
            while self._tokenizing:
                self._vocab_users.wait()


class _EngineStopped(EngineError):
    """The scheduler is gone (the engine was closed)."""


def _wipe(seq: LlamaSequence) -> None:
    """Zero and drop a parked KV state."""
    if seq.saved is not None:
        ctypes.memset(seq.saved, 0, len(seq.saved))
    seq.saved, seq.saved_size = None, 0


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop`` (from another thread)."""
    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
        loop.call_soon_threadsafe(callback, *args)


def _deliver(items: list[tuple[_Work, Any]]) -> None:
    """On the event loop: one step's output for its readers."""
    for work, item in items:
        if item is _STOPPED:
            _settle(work.stopped, None, None)
        else:
            work.queue.put_nowait(item)


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
