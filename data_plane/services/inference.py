"""Chat and completion use cases: pick the model, the session, the prompt; run the engine.

Every check a caller can fail (model, session, limits, context size, rate and quota,
queue) runs before the first byte of the answer, so errors get their status code even
for a streamed call. A call without a session runs in a one-shot session that ends with
the call.

The work a request can ask for is bounded before it starts (messages, characters, stop
strings: ``LimitsSettings``), and the prompt is built (chat template, tokenizing) on
the runtime's prompt workers, client by client, never on the event loop. Its token
cost (prompt tokens plus ``max_tokens``) is then known and taken from the client's
tokens-per-minute and quotas before the generation queues; what it did not use is given
back when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from data_plane.engine.base import (
    ClientBusy,
    Constraint,
    ContextOverflow,
    Engine,
    EngineBusy,
    EngineError,
    Generation,
    SamplingParams,
    UnsupportedSchema,
)
from data_plane.engine.chat_template import ChatTemplateError
from data_plane.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from data_plane.metrics import TurnTiming
from data_plane.protocol import ChatCompletionRequest, CompletionRequest, _Sampling
from data_plane.rate_limits import Reservation
from data_plane.runtime import SWITCH_RETRY_AFTER_SECONDS, Runtime
from data_plane.services.structured import (
    ToolCallReader,
    ToolPlan,
    chat_messages,
    constraint_for,
    render_reply,
    tool_plan,
    with_tools,
)
from data_plane.sessions import Session
from shared import tracing
from shared.commitment import TurnCommitment, answer_document
from shared.config import ClientSpec, ModelSpec

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Messages = list[dict[str, str]]
# Context assembly (retrieval) may rewrite the messages the model sees for one turn and
# return extra response fields (its sources). The session transcript keeps the caller's.
ContextAssembler = Callable[
    [ClientSpec, Session, ChatCompletionRequest, Messages, Engine],
    Awaitable[tuple[Messages, dict[str, Any]]],
]


@dataclass(eq=False)
class Turn:
    """One request's generation, between its checks and its end."""

    id: str
    session: Session
    stream: AsyncGenerator[str, None]
    result: Generation
    started: float
    created: int = field(default_factory=lambda: int(time.time()))
    new_messages: Messages | None = None  # chat: what this turn adds to the transcript
    extra: dict[str, Any] = field(default_factory=dict)  # sanctum fields of the response
    text: list[str] = field(default_factory=list)
    ended: dict[str, Any] | None = None  # end hooks' output for a one-shot session
    reservation: Reservation | None = None  # what it took of the rate limits and quotas
    finished: bool = False
    tools: ToolCallReader | None = None  # a chat with tools: reads its calls
    content: list[str] = field(default_factory=list)  # the text given out (not calls)
    timing: TurnTiming | None = None  # its time to first token and between tokens
    # Tracing on: its "sanctum.generation" span (ids, counts, durations) and the time
    # of its first piece of text.
    span: trace.Span | None = None
    first_piece: float | None = None
    # A chat whose client sent a commitment nonce: the nonce and its request's hash,
    # until the turn ends (shared.commitment). Never logged.
    commitment: TurnCommitment | None = None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.tools.calls if self.tools is not None else []

    @property
    def finish_reason(self) -> str | None:
        # A generation cut off after whole calls keeps "length": the client sees it.
        reason = self.result.finish_reason
        return "tool_calls" if self.tool_calls and reason == "stop" else reason

    async def deltas(self) -> AsyncIterator[str | list[dict[str, Any]]]:
        """The answer as it streams: its text, then, if it called tools, the list of
        its calls (OpenAI's shape) once at the end."""
        async for chunk in self.chunks():
            text = chunk if self.tools is None else self.tools.feed(chunk)
            if text:
                self.content.append(text)
                yield text
        if self.tools is not None:
            tail = self.tools.finish()
            if tail:
                self.content.append(tail)
                yield tail
            if self.tools.calls:
                yield self.tools.calls

    def message(self) -> dict[str, Any]:
        """The assistant's message of a whole (not streamed) chat answer."""
        content = "".join(self.content)
        if not self.tool_calls:
            return {"role": "assistant", "content": content}
        return {
            "role": "assistant",
            "content": content.strip() or None,
            "tool_calls": self.tool_calls,
        }

    def reply(self) -> str:
        """The assistant's turn as the transcript keeps it (calls in the tool format)."""
        if not self.tool_calls:
            return "".join(self.text)
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in self.tool_calls]
        return render_reply("".join(self.content).strip(), calls)

    async def chunks(self) -> AsyncIterator[str]:
        """The answer's text; Unavailable (503) if the engine ends the generation under
        it (the node shutting down, the session torn down)."""
        try:
            async for chunk in self.stream:
                self.text.append(chunk)
                if self.timing is not None:
                    self.timing.piece()
                if self.span is not None and self.first_piece is None:
                    self.first_piece = time.monotonic()
                yield chunk
        except EngineError as exc:
            raise Unavailable(str(exc), code="generation_ended") from None


class InferenceService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.context_assemblers: list[ContextAssembler] = []

    # --- lookups -------------------------------------------------------------------------

    def model_for(self, client: ClientSpec, name: str) -> tuple[ModelSpec, Engine]:
        bundle = self.runtime.config.usable()
        spec = bundle.model(name) if bundle else None
        if spec is None:
            # Named by ``param``, not quoted: an error never echoes what was sent.
            raise NotFound("no such model on this node", param="model", code="model_not_found")
        if name not in client.models:
            raise Forbidden("this key may not use that model", param="model")
        engine = self.runtime.engine_for(spec)
        if engine is None:
            if self.runtime.switching(name):
                raise _switching()
            raise Unavailable("that model is not loaded on this node")
        return spec, engine

    def allowed_models(self, client: ClientSpec) -> list[ModelSpec]:
        bundle = self.runtime.config.usable()
        if bundle is None:
            return []
        return [m for m in bundle.models if m.name in client.models]

    async def open_session(
        self, client: ClientSpec, model: str, ttl: int | None, *, one_shot: bool = False
    ) -> Session:
        spec, engine = self.model_for(client, model)
        limits = self.runtime.settings.sessions
        ttl = ttl or limits.default_ttl_seconds
        if ttl > limits.max_ttl_seconds:
            raise BadRequest(f"ttl may be at most {limits.max_ttl_seconds} seconds", param="ttl")
        return await self.runtime.sessions.open(
            client_id=client.id,
            model=spec,
            engine=engine,
            ttl_seconds=ttl,
            max_sessions=client.limits.max_sessions,
            one_shot=one_shot,
        )

    async def _session(self, client: ClientSpec, model: str, session_id: str | None) -> Session:
        if session_id is None:
            return await self.open_session(client, model, None, one_shot=True)
        session = self.runtime.sessions.get(client.id, session_id)
        if session.model.name != model:
            raise BadRequest(f"session {session.id} runs model {session.model.name}", param="model")
        self.model_for(client, model)  # the client may have lost the model since
        return session

    def _check_size(self, req: _Sampling, chars: int, param: str) -> None:
        """Refuse a request past the node's limits before any work is done for it."""
        limits = self.runtime.settings.limits
        if chars > limits.max_prompt_chars:
            raise BadRequest(
                f"{param} hold {chars} characters; at most {limits.max_prompt_chars} in a request",
                param=param,
                code="request_too_large",
            )
        stops = req.stops()
        if len(stops) > limits.max_stop:
            raise BadRequest(
                f"{len(stops)} stop sequences; at most {limits.max_stop}",
                param="stop",
                code="too_many_stop_sequences",
            )
        if any(len(stop) > limits.max_stop_chars for stop in stops):
            raise BadRequest(
                f"a stop sequence may be at most {limits.max_stop_chars} characters",
                param="stop",
                code="stop_sequence_too_long",
            )

    def _check_messages(self, count: int, held: int = 0) -> None:
        limit = self.runtime.settings.limits.max_messages
        if held + count > limit:
            where = f"this session holds {held} and " if held else ""
            raise BadRequest(
                f"{where}the request has {count} messages; at most {limit} in a chat"
                + ("; start a new session" if held else ""),
                param="messages",
                code="too_many_messages",
            )

    def _params(self, client: ClientSpec, req: _Sampling, limit: int | None) -> SamplingParams:
        unsupported = req.unsupported()
        if unsupported:
            raise BadRequest(f"{unsupported} is not supported by this server", param=unsupported)
        cap = client.limits.max_tokens_per_request
        if limit is not None and limit > cap:
            raise BadRequest(
                f"max_tokens {limit} exceeds this client's limit of {cap}", param="max_tokens"
            )
        biases = req.biases()
        if biases:
            _, engine = self.model_for(client, req.model)
            if any(not 0 <= token < engine.vocab_size for token, _ in biases):
                # Which id is not said: ids a client sends are not echoed.
                raise BadRequest(
                    "logit_bias holds a token id outside the model's vocabulary "
                    f"(0 to {engine.vocab_size - 1})",
                    param="logit_bias",
                )
        return SamplingParams(
            max_tokens=limit or cap,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            typical_p=req.typical_p,
            repeat_penalty=req.repeat_penalty,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            penalty_last_n=req.repeat_last_n,
            logit_bias=biases,
            seed=req.seed,
            stop=req.stops(),
            logprobs=req.top_logprobs_wanted(),
        )

    # --- turns ---------------------------------------------------------------------------

    async def start_chat(
        self,
        client: ClientSpec,
        req: ChatCompletionRequest,
        session_id: str | None,
        commitment: TurnCommitment | None = None,
    ) -> Turn:
        """A chat turn, started; ``commitment`` (the client's nonce and its request's
        hash) makes its end add a content commitment to the session's record."""
        self._check_messages(len(req.messages))
        self._check_size(req, req.content_chars(), "messages")
        params = self._params(client, req, req.token_limit())
        plan = tool_plan(req)
        if plan is not None or req.response_format is not None:
            _, engine = self.model_for(client, req.model)
            # Converting a schema and parsing its grammar are heavy: off the event loop.
            constraint = await self.runtime.prompt_work.run(
                client.id, _constraint, engine, req, plan
            )
            params = dataclasses.replace(params, constraint=constraint)
        session = await self._session(client, req.model, session_id)
        turn = await self._start(
            client, session, params, lambda: self._chat_prompt(client, session, req, plan)
        )
        if plan is not None:
            turn.tools = ToolCallReader(plan.names())
        turn.commitment = commitment
        return turn

    async def start_completion(
        self, client: ClientSpec, req: CompletionRequest, session_id: str | None
    ) -> Turn:
        text = req.prompt_text()
        self._check_size(req, len(text), "prompt")
        if req.echo and req.logprobs is not None:
            # OpenAI's answer would score the prompt's tokens too; this server does not.
            raise BadRequest("logprobs with echo is not supported by this server", param="echo")
        params = self._params(client, req, req.token_limit())
        session = await self._session(client, req.model, session_id)

        async def prompt() -> tuple[list[int], Messages | None, dict[str, Any]]:
            tokens = await self.runtime.prompt_work.run(client.id, session.engine.text_tokens, text)
            return tokens, None, {}

        return await self._start(client, session, params, prompt)

    async def _chat_prompt(
        self,
        client: ClientSpec,
        session: Session,
        req: ChatCompletionRequest,
        plan: ToolPlan | None = None,
    ) -> tuple[list[int], Messages, dict[str, Any]]:
        sent = chat_messages(req.messages)
        # A client that resends the whole conversation (as stateless OpenAI tools do)
        # adds only what follows the transcript; otherwise everything sent is new.
        held = session.transcript
        new = sent[len(held) :] if held and sent[: len(held)] == held else sent
        if not new:
            raise BadRequest("no new message for this session", param="messages")
        self._check_messages(len(new), len(held))
        messages = held + new
        extra: dict[str, Any] = {}
        for assemble in self.context_assemblers:
            messages, more = await assemble(client, session, req, messages, session.engine)
            extra.update(more)
        messages = with_tools(messages, plan)
        try:
            tokens = await self.runtime.prompt_work.run(
                client.id, session.engine.chat_tokens, messages
            )
        except ChatTemplateError as exc:
            raise BadRequest(f"messages don't fit the model's chat format: {exc}") from None
        return tokens, new, extra

    async def _start(
        self,
        client: ClientSpec,
        session: Session,
        params: SamplingParams,
        prompt: Callable[[], Awaitable[tuple[list[int], Messages | None, dict[str, Any]]]],
    ) -> Turn:
        if self.runtime.draining(session.engine):
            raise _switching()
        if session.busy.locked():
            raise Conflict(f"session {session.id} is answering another request")
        await session.busy.acquire()
        reservation: Reservation | None = None
        # From here: the client's time to first token includes its prompt's building.
        timing = self.runtime.metrics.turn(session.engine.info.name, client.id)
        span = _generation_span(client, session) if tracing.enabled() else None
        begun = time.monotonic()
        try:
            result = Generation()
            engine = session.engine
            if self.runtime.draining(engine):
                # Its model version is being retired: this session ends with its
                # record, and a new one (on the new version) is the way on.
                raise _switching()
            try:
                tokens, new_messages, extra = await prompt()
                if span is not None:
                    span.set_attribute("sanctum.prompt_seconds", time.monotonic() - begun)
                if len(tokens) >= engine.info.context_size:  # before it costs the client
                    raise ContextOverflow(len(tokens), engine.info.context_size)
                reservation = self.runtime.rate_limits.reserve(
                    client.id, client.limits, len(tokens) + params.max_tokens
                )
                stream = await engine.generate(
                    session.seq, tokens, params, result, self.runtime.caps_for(client, engine)
                )
            except ContextOverflow as exc:
                raise BadRequest(
                    f"{exc}; shorten the messages or start a new session",
                    param="messages",
                    code="context_length_exceeded",
                ) from None
            except ClientBusy as exc:
                raise TooManyRequests(
                    str(exc), code="too_many_generations", retry_after=1
                ) from None
            except EngineBusy as exc:
                raise TooManyRequests(str(exc), code="engine_busy", retry_after=1) from None
            except EngineError as exc:
                raise Unavailable(str(exc)) from None
        except BaseException as exc:
            if span is not None:
                # The error's type only: its message may echo the request.
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(trace.StatusCode.ERROR)
                span.end()
            if reservation is not None:
                self.runtime.rate_limits.settle(reservation, 0)
            session.busy.release()
            if session.one_shot:
                await self.runtime.sessions.end(session, "one_shot")
            raise
        turn = Turn(
            id=secrets.token_hex(12),
            session=session,
            stream=stream,
            result=result,
            started=time.monotonic(),
            new_messages=new_messages,
            extra={"session_id": session.id, **extra},
            reservation=reservation,
            timing=timing,
            span=span,
        )
        return turn

    async def finish(self, turn: Turn) -> None:
        """Account the turn to its session, keep the transcript, end a one-shot session.

        Runs whether the turn completed or was cut off (the client went away); a second
        call does nothing. It runs to its end even if its caller is cancelled meanwhile,
        so a one-shot session's record is stored whatever the client does.
        """
        if turn.finished:
            return
        turn.finished = True
        await asyncio.shield(self._finish(turn))

    async def _finish(self, turn: Turn) -> None:
        session, result = turn.session, turn.result
        await turn.stream.aclose()  # a turn cut off stops decoding now, not at GC time
        if turn.reservation is not None:
            self.runtime.rate_limits.settle(
                turn.reservation, result.prompt_tokens + result.completion_tokens
            )
        if turn.timing is not None:
            turn.timing.done(result.prompt_tokens, result.completion_tokens)
            if turn.timing.first_token_seconds is not None:
                session.first_token(turn.timing.first_token_seconds)
        if turn.span is not None:
            _end_generation_span(turn)
        if turn.commitment is not None and result.finish_reason is not None:
            # A completed turn only: one cut off gave its client no whole answer.
            answer = answer_document(turn.message(), turn.finish_reason)
            session.commit(turn.commitment.answered(session.requests, answer))
        turn.commitment = None  # the nonce goes with the turn
        session.requests += 1
        session.prompt_tokens += result.prompt_tokens
        session.completion_tokens += result.completion_tokens
        if turn.new_messages is not None and result.finish_reason is not None:
            session.transcript += turn.new_messages
            session.transcript.append({"role": "assistant", "content": turn.reply()})
        session.last_used = time.monotonic()
        session.busy.release()
        logger.info(
            "turn done session=%s prompt_tokens=%d completion_tokens=%d finish=%s seconds=%.3f",
            session.id,
            result.prompt_tokens,
            result.completion_tokens,
            result.finish_reason or "cancelled",
            time.monotonic() - turn.started,
        )
        if session.one_shot and not session.closed:
            _, turn.ended = await self.runtime.sessions.end(session, "one_shot")


def _generation_span(client: ClientSpec, session: Session) -> trace.Span:
    """A generation's span, a child of the request's: ids the operator or the node chose.

    Not made current (its stream outlives this call and is resumed from other
    contexts); it ends in :meth:`InferenceService._finish`.
    """
    return tracer.start_span(
        "sanctum.generation",
        attributes={
            "sanctum.client_id": client.id,
            "sanctum.session_id": session.id,
            "sanctum.model": session.engine.info.name,
            "sanctum.one_shot": session.one_shot,
        },
    )


def _end_generation_span(turn: Turn) -> None:
    """Counts and durations of a finished (or cut-off) generation; no text."""
    span, result = turn.span, turn.result
    assert span is not None
    span.set_attribute("sanctum.prompt_tokens", result.prompt_tokens)
    span.set_attribute("sanctum.completion_tokens", result.completion_tokens)
    span.set_attribute("sanctum.finish_reason", turn.finish_reason or "cancelled")
    if turn.first_piece is not None:
        span.set_attribute("sanctum.time_to_first_token_seconds", turn.first_piece - turn.started)
    span.set_attribute("sanctum.generation_seconds", time.monotonic() - turn.started)
    span.end()


def _switching() -> Unavailable:
    """503 for a model between versions: a client retries after the wait it is given.

    A session on the old version is ending (with its record); the retry gets 404 for it,
    and a new session runs on the new version.
    """
    return Unavailable(
        "this model is switching to a new version on this node; retry shortly",
        code="model_switching",
        retry_after=SWITCH_RETRY_AFTER_SECONDS,
    )


def _constraint(
    engine: Engine, req: ChatCompletionRequest, plan: ToolPlan | None
) -> Constraint | None:
    """The grammar of a chat's answer, compiled for ``engine`` (None: a free answer)."""
    constraint = constraint_for(req, plan)
    if constraint is not None:
        try:
            engine.prepare_constraint(constraint)
        except UnsupportedSchema as exc:
            param = "tools" if plan is not None else "response_format"
            raise BadRequest(str(exc), param=param, code="unsupported_schema") from None
    return constraint
