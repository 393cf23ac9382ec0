"""What the rest of the data plane may ask of an engine, and the pieces every engine needs.

An engine owns one loaded model. Each session gets its own :class:`Sequence`: its own KV
cells, never shared with another sequence (no prompt cache, no common prefix). A
generation takes the whole prompt of the turn; the engine reuses only the KV cells the
same sequence already holds for the matching prefix.
"""

from __future__ import annotations

import abc
import codecs
from collections.abc import AsyncGenerator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field


class EngineError(Exception):
    """Base for engine errors (messages hold counts and ids, never content)."""


class UnsupportedSchema(EngineError):
    """A JSON schema (of ``response_format`` or a tool) uses what constrained decoding
    can't enforce. The message names the JSON Schema keyword, never a value."""

    def __init__(self, keyword: str, why: str = "is not supported") -> None:
        super().__init__(
            f"JSON Schema keyword {keyword!r} {why}"
            if keyword
            else "the schema can't be turned into a grammar"
        )
        self.keyword = keyword


class ContextOverflow(EngineError):
    """The prompt does not fit the context."""

    def __init__(self, prompt_tokens: int, context_size: int) -> None:
        super().__init__(
            f"prompt is {prompt_tokens} tokens; the model's context holds {context_size}"
        )
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size


class EngineBusy(EngineError):
    """No sequence slot is free and the queue is full."""


class ClientBusy(EngineBusy):
    """This client holds as many running and waiting generations as its caps allow
    (other clients are still admitted)."""


@dataclass(frozen=True)
class ClientCaps:
    """What one client may hold of an engine: from its limits in the signed config, or
    the node's defaults for a client that sets none."""

    max_running: int  # generations decoding at once (slots)
    max_queued: int  # generations waiting for a slot
    max_parked_bytes: int  # KV state of its idle or paused sessions, parked in RAM


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    context_size: int  # tokens one sequence may hold


@dataclass(frozen=True)
class Constraint:
    """What a generation's tokens must spell: a llama.cpp GBNF grammar (``root`` is its
    start rule). Built from a JSON schema or a tool list by :mod:`.structured`."""

    gbnf: str
    root: str = "root"


@dataclass(frozen=True)
class SamplingParams:
    """How one generation picks its tokens (each default leaves its sampler out)."""

    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0  # llama.cpp's multiplicative penalty; 1: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64  # tokens the penalties look back on; -1: the whole context
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -100 or less bans it
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's and the k likeliest
    constraint: Constraint | None = None  # structured output: only what it allows

    def penalised(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        ) and self.penalty_last_n != 0

    def raw_greedy(self) -> bool:
        """The likeliest token of the logits as the model gave them (temperature 0, no
        bias, no penalty), whatever constraint then filters them."""
        return self.temperature <= 0 and not self.logit_bias and not self.penalised()


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and the model's log-probabilities at its step (content: it
    lives in RAM with the answer, never in a log)."""

    piece: bytes  # the token's text, as bytes (may be part of a UTF-8 character)
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()  # the likeliest tokens, likeliest first


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the scheduler, for health and tests: counts and ids, no content."""

    slots: int
    slots_busy: int
    running: dict[str, int]  # by client
    waiting: dict[str, int]  # by client
    parked_bytes: int
    parked_bytes_by_client: dict[str, int]
    parked_sequences: int
    paused: int  # generations paused so far, to give their slot to another client
    parked_dropped: int  # parked states dropped for a RAM cap so far


@dataclass
class Generation:
    """Counts of one generation, filled in as it runs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" or "length"
    # With ``SamplingParams.logprobs``: one entry per token whose text the reader has been
    # given so far (tokens cut off with a stop string are not in it).
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(eq=False)
class Sequence:
    """A session's KV sequence. ``tokens`` mirrors exactly what its KV cells hold.

    ``client`` is the id of the client whose session it is: the engine shares its turns,
    queue places and parked RAM out client by client."""

    client: str = ""
    tokens: list[int] = field(default_factory=list)
    closed: bool = False


class Engine(abc.ABC):
    """One loaded model. Safe to call from the event loop; heavy work runs off it."""

    info: ModelInfo
    default_caps: ClientCaps  # for a client whose config sets no caps of its own
    vocab_size: int  # token ids run from 0 to vocab_size - 1 (logit_bias is checked on it)

    @abc.abstractmethod
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokens of ``text``; ``special`` parses control tokens written in the text."""

    @abc.abstractmethod
    def chat_tokens(self, messages: Seq[dict[str, str]]) -> list[int]:
        """The prompt of a chat in the model's template, ready for the assistant's turn.

        Message content is tokenized as text: control tokens written in it stay text.
        """

    @abc.abstractmethod
    def text_tokens(self, prompt: str) -> list[int]:
        """The prompt of a plain completion (text only, BOS added if the model wants it)."""

    def prepare_constraint(self, constraint: Constraint) -> None:
        """Compile ``constraint`` for this model's vocabulary now, so a grammar that
        can't be used is refused (UnsupportedSchema) before the generation queues.
        Blocking: callers run it off the event loop."""
        raise UnsupportedSchema("response_format", "needs an engine with constrained decoding")

    @abc.abstractmethod
    async def open_sequence(self, client: str = "") -> Sequence:
        """A fresh, empty sequence for a new session of ``client``."""

    @abc.abstractmethod
    async def generate(
        self,
        seq: Sequence,
        prompt: list[int],
        params: SamplingParams,
        result: Generation,
        caps: ClientCaps | None = None,
    ) -> AsyncGenerator[str, None]:
        """Queue a generation of ``prompt`` in ``seq``; return the stream of its text.

        Awaiting it raises ContextOverflow, EngineBusy (the model's queue is full) or
        ClientBusy (the sequence's client is at ``caps``; the engine's defaults when
        None) before any output, so the caller can still answer with an error status.
        Closing the stream early (a client that went away) stops decoding at once and
        leaves the sequence consistent. ``result`` holds the counts and the finish reason
        once the stream ends.
        """

    @abc.abstractmethod
    async def close_sequence(self, seq: Sequence) -> None:
        """Remove every KV cell of ``seq`` and forget its tokens."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Counts of the scheduler now: slots, waiting, parked RAM."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop, cancel what runs, and free the model."""


class StopMatcher:
    """Holds back text that may be the start of a stop string.

    ``feed`` returns the text that is safe to emit; once a stop string appears, the text
    before it is returned and ``stopped`` turns true. Each stop string has a
    Knuth-Morris-Pratt state (how much of its start the text ends with), advanced one
    character at a time: a token costs about the number of stop strings times its
    length in characters, however long or repetitive the stop strings are. The
    scheduler thread runs this for every token of every session.
    """

    def __init__(self, stops: Seq[str]) -> None:
        self._stops = [s for s in stops if s]
        self._fail = [_failure(s) for s in self._stops]
        self._state = [0] * len(self._stops)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        matched = False
        for i, stop in enumerate(self._stops):
            state, fail = self._state[i], self._fail[i]
            for ch in text:
                while state and stop[state] != ch:
                    state = fail[state - 1]
                if stop[state] == ch:
                    state += 1
                if state == len(stop):
                    matched = True
                    break
            self._state[i] = state
        if matched:
            # Where the earliest stop string starts (each match starts inside buf: a
            # state never exceeds what is held back).
            cut = min(i for i in (buf.find(s) for s in self._stops) if i >= 0)
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = max(self._state)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _failure(pattern: str) -> list[int]:
    """KMP's table: for each prefix, the length of its longest proper border."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class TextDecoder:
    """Turns token pieces (bytes) into text without splitting a UTF-8 character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
