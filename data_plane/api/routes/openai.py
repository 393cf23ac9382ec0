"""OpenAI-compatible routes: models, chat completions, completions."""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from data_plane.api.deps import (
    ClientDep,
    InferenceDep,
    LimitedClientDep,
    RetrievalDep,
    SessionHeader,
)
from data_plane.engine.base import TokenLogprob
from data_plane.errors import ApiError, BadRequest
from data_plane.protocol import ChatCompletionRequest, CompletionRequest
from data_plane.services.inference import InferenceService, Turn
from shared.commitment import (
    NONCE_FIELD,
    NONCE_HEADER,
    CommitmentError,
    TurnCommitment,
    nonce_of,
)
from shared.config import ModelSpec

router = APIRouter(prefix="/v1", tags=["openai"])

SESSION_HEADER = "X-Sanctum-Session"


@router.get("/models")
async def list_models(
    client: ClientDep, service: InferenceDep, retrieval: RetrievalDep
) -> dict[str, Any]:
    """The models this key may use (the embedding model too, if it may embed)."""
    embedding_model = retrieval.embedding_model(client)
    embedding = (
        [
            {
                "id": embedding_model,
                "object": "model",
                "created": 0,
                "owned_by": "sanctum",
                "sanctum": {"type": "embedding", "dimensions": retrieval.dimensions},
            }
        ]
        if embedding_model
        else []
    )
    return {
        "object": "list",
        "data": [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "sanctum",
                "sanctum": {
                    "version": m.version,
                    "sha256": m.sha256,
                    "context_size": _context_size(service, m),
                },
            }
            for m in service.allowed_models(client)
        ]
        + embedding,
    }


def _usage(turn: Turn) -> dict[str, int]:
    r = turn.result
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


def _sanctum(turn: Turn) -> dict[str, Any]:
    out = dict(turn.extra)
    if turn.ended:
        out.update(turn.ended)
    return out


def _context_size(service: InferenceService, spec: ModelSpec) -> int:
    """Tokens a session's sequence holds: the loaded engine's, which node settings may
    set below or above the pin's."""
    engine = service.runtime.engine_for(spec)
    return engine.info.context_size if engine is not None else spec.context_size


class _Logprobs:
    """A turn's token log-probabilities, handed out as its text is: each call takes the
    entries of the tokens whose text was read since the last, in OpenAI's shapes."""

    def __init__(self, turn: Turn, wanted: bool, offset: int = 0) -> None:
        self._turn = turn
        self.wanted = wanted
        self._seen = 0
        self._offset = offset  # legacy text_offset: characters before the next token
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _take(self) -> list[TokenLogprob]:
        entries = self._turn.result.logprobs[self._seen :]
        self._seen += len(entries)
        return entries

    def chat(self) -> dict[str, Any] | None:
        """``choices[].logprobs`` of a chat answer or chunk."""
        if not self.wanted:
            return None
        return {
            "content": [
                {
                    **_token(e.piece, e.logprob),
                    "top_logprobs": [_token(piece, lp) for piece, lp in e.top],
                }
                for e in self._take()
            ],
            "refusal": None,
        }

    def legacy(self) -> dict[str, Any] | None:
        """``choices[].logprobs`` of a (legacy) completion or chunk."""
        if not self.wanted:
            return None
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for e in self._take():
            out["tokens"].append(e.piece.decode("utf-8", "replace"))
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append(
                {piece.decode("utf-8", "replace"): lp for piece, lp in e.top}
            )
            out["text_offset"].append(self._offset)
            self._offset += len(self._decoder.decode(e.piece))
        return out


def _token(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


class _TurnResponse(StreamingResponse):
    """A streamed turn that is accounted for however its response ends.

    A client that goes away before the body starts cancels the response before
    ``events`` ever runs, so its ``finally`` never would: the turn is finished here too
    (its generation stopped, the session freed).
    """

    def __init__(self, service: InferenceService, turn: Turn, content: AsyncIterator[str]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={SESSION_HEADER: turn.session.id, "Cache-Control": "no-store"},
        )
        self._service = service
        self._turn = turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._service.finish(self._turn)


def _tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed calls in OpenAI's shape: per call, its id, type and name (arguments
    empty), then its arguments; the client joins them by ``index``."""
    out: list[dict[str, Any]] = []
    for i, call in enumerate(calls):
        head = {**call, "index": i, "function": {**call["function"], "arguments": ""}}
        out.append({"delta": {"tool_calls": [head]}})
        args = {"index": i, "function": {"arguments": call["function"]["arguments"]}}
        out.append({"delta": {"tool_calls": [args]}})
    return out


def _streamed(
    service: InferenceService,
    turn: Turn,
    chunk: Callable[[dict[str, Any]], dict[str, Any]],
    delta: Callable[[str], dict[str, Any]],
    final: Callable[[str | None], dict[str, Any]],
    include_usage: bool,
) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        finished = False
        try:
            first = delta("")
            if first:
                yield _sse(chunk(first))
            try:
                async for piece in turn.deltas():
                    if isinstance(piece, str):
                        yield _sse(chunk(delta(piece)))
                    else:
                        for part in _tool_call_deltas(piece):
                            yield _sse(chunk(part))
            except ApiError as exc:
                # The generation was ended under the stream (shutdown, teardown): say so
                # in OpenAI's error shape, as the stream's last event.
                finished = True
                await service.finish(turn)
                yield _sse(exc.body())
                return
            finished = True
            await service.finish(turn)  # one-shot: its usage record is durable first
            last = chunk(final(turn.finish_reason))
            last["sanctum"] = _sanctum(turn)
            yield _sse(last)
            if include_usage:
                yield _sse({**chunk({}), "choices": [], "usage": _usage(turn)})
            yield _sse("[DONE]")
        finally:
            if not finished:
                # The client went away: this task is being cancelled, and the session's
                # accounting (and a one-shot's teardown) must still complete.
                with anyio.CancelScope(shield=True):
                    await service.finish(turn)

    return _TurnResponse(service, turn, events())


async def _commitment(request: Request, nonce: str | None) -> TurnCommitment | None:
    """The turn's commitment if the client sent a nonce (400 for a bad one).

    The request hash covers the JSON the client sent: the body FastAPI parsed (and
    Starlette keeps), not the model validated from it, which fills in defaults."""
    raw = await request.json()
    try:
        key = nonce_of(raw, nonce)
        if key is None:
            return None
        # Canonicalising a client's document is pure Python over up to the body limit:
        # off the event loop every stream is served from.
        return await asyncio.to_thread(TurnCommitment, key, raw)
    except CommitmentError as exc:
        param = "sanctum.commitment_nonce" if nonce is None else NONCE_HEADER
        raise BadRequest(str(exc), param=param, code="invalid_commitment") from None


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    client: LimitedClientDep,
    service: InferenceDep,
    session_id: SessionHeader = None,
    nonce: Annotated[str | None, Header(alias=NONCE_HEADER)] = None,
) -> JSONResponse | StreamingResponse:
    commitment = await _commitment(request, nonce)
    turn = await service.start_chat(client, body, session_id, commitment)
    logprobs = _Logprobs(turn, body.top_logprobs_wanted() is not None)
    common = {
        "id": f"chatcmpl-{turn.id}",
        "created": turn.created,
        "model": body.model,
        "system_fingerprint": f"sanctum-{turn.session.model.sha256[:12]}",
    }
    if body.stream:
        return _streamed(
            service,
            turn,
            chunk=lambda choice: {
                **common,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "logprobs": None, "finish_reason": None, **choice}]
                if choice
                else [],
            },
            delta=lambda text: (
                {"delta": {"role": "assistant", "content": ""}}
                if text == ""
                else {"delta": {"content": text}, "logprobs": logprobs.chat()}
            ),
            final=lambda reason: {"delta": {}, "finish_reason": reason},
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
    try:
        async for _ in turn.deltas():
            pass
    finally:
        await service.finish(turn)
    return JSONResponse(
        {
            **common,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": turn.message(),
                    "logprobs": logprobs.chat(),
                    "finish_reason": turn.finish_reason,
                }
            ],
            "usage": _usage(turn),
            "sanctum": _sanctum(turn),
        },
        headers={SESSION_HEADER: turn.session.id, "Cache-Control": "no-store"},
    )


@router.post("/completions", response_model=None)
async def completions(
    request: Request,
    body: CompletionRequest,
    client: LimitedClientDep,
    service: InferenceDep,
    session_id: SessionHeader = None,
    nonce: Annotated[str | None, Header(alias=NONCE_HEADER)] = None,
) -> JSONResponse | StreamingResponse:
    raw = await request.json()
    options = raw.get("sanctum") if isinstance(raw, dict) else None
    if nonce is not None or (isinstance(options, dict) and NONCE_FIELD in options):
        # Asked for and silently not made, a commitment would fail the client later.
        raise BadRequest(
            "content commitments are made for /v1/chat/completions only",
            param="sanctum.commitment_nonce" if nonce is None else NONCE_HEADER,
            code="commitment_unsupported",
        )
    turn = await service.start_completion(client, body, session_id)
    prefix = body.prompt_text() if body.echo else ""
    logprobs = _Logprobs(turn, body.top_logprobs_wanted() is not None, len(prefix))
    common = {"id": f"cmpl-{turn.id}", "created": turn.created, "model": body.model}
    if body.stream:
        return _streamed(
            service,
            turn,
            chunk=lambda choice: {
                **common,
                "object": "text_completion",
                "choices": [{"index": 0, "logprobs": None, "finish_reason": None, **choice}]
                if choice
                else [],
            },
            delta=lambda text: (
                ({"text": prefix} if prefix else {})
                if text == ""
                else {"text": text, "logprobs": logprobs.legacy()}
            ),
            final=lambda reason: {"text": "", "finish_reason": reason},
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
    try:
        async for _ in turn.chunks():
            pass
    finally:
        await service.finish(turn)
    return JSONResponse(
        {
            **common,
            "object": "text_completion",
            "choices": [
                {
                    "index": 0,
                    "text": prefix + "".join(turn.text),
                    "logprobs": logprobs.legacy(),
                    "finish_reason": turn.result.finish_reason,
                }
            ],
            "usage": _usage(turn),
            "sanctum": _sanctum(turn),
        },
        headers={SESSION_HEADER: turn.session.id, "Cache-Control": "no-store"},
    )
