"""Content commitments: keyed hashes of a turn's request and answer, opened by a nonce.

A client that wants to prove later what it asked and what it was answered, without the
node or the control plane ever keeping the text, sends a nonce of its own with a chat
completion: the header ``X-Sanctum-Commitment-Nonce: NONCE`` or the body field
``"sanctum": {"commitment_nonce": NONCE}`` (the openai SDK's ``extra_body``); both may be
given if they are equal. NONCE is 16 to 64 random bytes in base64url without padding
(22 to 86 characters), in its one canonical spelling. Anything else is refused with 400,
and the error never repeats what was sent.

For each such turn the node keeps, and signs into the session's usage record
(``shared.usage.Commitment``, for the session's first ``MAX_TURN_TIMES`` such turns):

- ``turn``: the session's request number, counting from 0 (every request counts, with a
  nonce or not, completed or not; only a completed turn gets a commitment);
- ``request``: ``HMAC-SHA256(key=nonce bytes, msg=REQUEST_TAG + JCS(request document))``;
- ``answer``: ``HMAC-SHA256(key=nonce bytes, msg=ANSWER_TAG + JCS(answer document))``;

both in lowercase hex. JCS is RFC 8785 (``shared.canonical.jcs``). Without the nonce the
hashes say nothing about the text; with it, anyone can check a transcript against the
node's signature (``verify_commitment``, ``sanctum verify --commitment``).

**The request document** is the JSON object of the request body exactly as the client
sent it (every field, as JSON parsed it), with ``sanctum.commitment_nonce`` removed and
``sanctum`` itself removed if that leaves it empty. The node hashes the body it
received, so a client must keep the body it sent (not the arguments it passed to an
SDK, which adds and spells fields its own way).

**The answer document** is rebuilt from the response, streamed or not, as::

    {"choices": [{"index": I,
                  "message": {"role": ROLE, "content": CONTENT,
                              "tool_calls": [{"id", "type",
                                              "function": {"name", "arguments"}}, ...]},
                  "finish_reason": REASON}, ...]}

one choice per index, in index order, holding only these keys:

- ``role``: the message's role (``"assistant"``);
- ``content``: the answer's text. From a streamed answer, the ``delta.content`` pieces
  of that index joined in order. When the answer called tools, the text stripped of
  surrounding whitespace, or ``null`` if nothing is left; without tool calls, a string
  (``""`` for no text);
- ``tool_calls``: only when the answer called tools: each call's ``id``, ``type`` and
  ``function.name`` and ``function.arguments``, in call order. From a streamed answer,
  the call deltas joined by their ``index`` (id, type and name from the deltas that
  carry them, the arguments' pieces concatenated);
- ``finish_reason``: the choice's, from the last chunk that gives one when streamed.

Everything else in a response (ids, times, usage, logprobs, the ``sanctum`` field,
``refusal`` and other keys an SDK adds) is left out, so the same answer streamed or not
gives the same document. ``answer_from_response`` and ``answer_from_chunks`` build it;
both accept what the openai SDK's ``model_dump()`` gives as well as the raw JSON.

The nonce is a secret: it is never logged, put in a span or an exception message, and
the node forgets it when the turn ends. The hashes are harmless, but are kept out of
logs all the same.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.canonical import CanonicalEncodingError, CanonicalJSONError, decode_nonce, jcs
from shared.usage import Commitment, UsageRecord

NONCE_HEADER = "X-Sanctum-Commitment-Nonce"
NONCE_FIELD = "commitment_nonce"
REQUEST_TAG = b"sanctum/commitment/request/v1\n"
ANSWER_TAG = b"sanctum/commitment/answer/v1\n"
_TAGS = {"request": REQUEST_TAG, "answer": ANSWER_TAG}

Kind = Literal["request", "answer"]


class CommitmentError(ValueError):
    """A nonce, a document or a commitment is wrong. The message never holds content
    or the nonce."""


def parse_nonce(text: object) -> bytes:
    """The nonce's bytes: ``text`` must be 16 to 64 bytes in canonical unpadded base64url."""
    try:
        return decode_nonce(text, what="the commitment nonce")
    except CanonicalEncodingError as exc:
        raise CommitmentError(str(exc)) from None


def nonce_of(body: Mapping[str, Any], header: str | None) -> bytes | None:
    """The request's nonce (header or ``sanctum.commitment_nonce``), or None if it has none."""
    options = body.get("sanctum")
    in_body = options.get(NONCE_FIELD) if isinstance(options, Mapping) else None
    if isinstance(options, Mapping) and NONCE_FIELD in options and in_body is None:
        raise CommitmentError("sanctum.commitment_nonce must be a base64url string")
    if header is not None and in_body is not None and header != in_body:
        raise CommitmentError(
            f"the {NONCE_HEADER} header and sanctum.commitment_nonce differ: send one nonce"
        )
    text = header if header is not None else in_body
    return None if text is None else parse_nonce(text)


def request_document(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request body as the client sent it, less ``sanctum.commitment_nonce``."""
    document = dict(body)
    options = document.get("sanctum")
    if isinstance(options, Mapping) and NONCE_FIELD in options:
        rest = {k: v for k, v in options.items() if k != NONCE_FIELD}
        if rest:
            document["sanctum"] = rest
        else:
            del document["sanctum"]
    return document


def _calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id"),
                "type": call.get("type"),
                "function": {"name": function.get("name"), "arguments": function.get("arguments")},
            }
        )
    return out


def _choice(
    index: int,
    role: str | None,
    content: str | None,
    tool_calls: Sequence[Mapping[str, Any]] | None,
    finish_reason: str | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role}
    if tool_calls:
        message["content"] = (content or "").strip() or None
        message["tool_calls"] = _calls(tool_calls)
    else:
        message["content"] = content or ""
    return {"index": index, "message": message, "finish_reason": finish_reason}


def answer_document(
    message: Mapping[str, Any], finish_reason: str | None, index: int = 0
) -> dict[str, Any]:
    """The answer document of a one-choice answer: its message and finish reason."""
    return {
        "choices": [
            _choice(
                index,
                message.get("role"),
                message.get("content"),
                message.get("tool_calls"),
                finish_reason,
            )
        ]
    }


def answer_from_response(response: Mapping[str, Any]) -> dict[str, Any]:
    """The answer document of a whole (not streamed) chat completion response.

    An answer document is a response of its own kind, so this returns it unchanged."""
    choices = response.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str):
        raise CommitmentError("the answer has no choices: is it a chat completion response?")
    out = []
    for choice in choices:
        if not isinstance(choice, Mapping) or not isinstance(choice.get("message"), Mapping):
            raise CommitmentError("an answer choice has no message")
        message = choice["message"]
        out.append(
            _choice(
                int(choice.get("index") or 0),
                message.get("role"),
                message.get("content"),
                message.get("tool_calls"),
                choice.get("finish_reason"),
            )
        )
    return {"choices": sorted(out, key=lambda c: c["index"])}


@dataclass
class _Streamed:
    role: str | None = None
    content: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None


def answer_from_chunks(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The answer document of a streamed chat completion: its chunks, in order (the
    JSON of each ``data:`` event but ``[DONE]``)."""
    choices: dict[int, _Streamed] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            state = choices.setdefault(int(choice.get("index") or 0), _Streamed())
            delta = choice.get("delta") or {}
            if delta.get("role") is not None and state.role is None:
                state.role = delta["role"]
            if delta.get("content") is not None:
                state.content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                held = state.calls.setdefault(
                    int(call.get("index") or 0),
                    {"id": None, "type": None, "function": {"name": None, "arguments": ""}},
                )
                for key in ("id", "type"):
                    if call.get(key) is not None:
                        held[key] = call[key]
                function = call.get("function") or {}
                if function.get("name") is not None:
                    held["function"]["name"] = function["name"]
                if function.get("arguments") is not None:
                    held["function"]["arguments"] += function["arguments"]
            if choice.get("finish_reason") is not None:
                state.finish_reason = choice["finish_reason"]
    if not choices:
        raise CommitmentError("the streamed answer has no choices")
    return {
        "choices": [
            _choice(
                index,
                state.role,
                "".join(state.content),
                [state.calls[i] for i in sorted(state.calls)],
                state.finish_reason,
            )
            for index, state in sorted(choices.items())
        ]
    }


def answer_from(answer: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The answer document of a response, an answer document, or a list of chunks."""
    if isinstance(answer, Mapping):
        return answer_from_response(answer)
    return answer_from_chunks(answer)


def commit(nonce: bytes, document: Any, kind: Kind) -> str:
    """``HMAC-SHA256(nonce, tag + JCS(document))`` in hex; ``kind`` picks the tag."""
    if kind not in _TAGS:
        raise ValueError(f"kind must be request or answer, not {kind!r}")
    try:
        data = jcs(document)
    except CanonicalJSONError as exc:
        raise CommitmentError(f"the {kind} can't be put in canonical JSON: {exc}") from None
    return hmac.new(nonce, _TAGS[kind] + data, hashlib.sha256).hexdigest()


class TurnCommitment:
    """What the node holds for one turn while it runs: the nonce and the request's hash.

    Its repr never shows the nonce; it is dropped with the turn."""

    __slots__ = ("_nonce", "request")

    def __init__(self, nonce: bytes, request_body: Mapping[str, Any]) -> None:
        self._nonce = nonce
        self.request = commit(nonce, request_document(request_body), "request")

    def __repr__(self) -> str:
        return "TurnCommitment(<nonce withheld>)"

    def answered(self, turn: int, answer: Mapping[str, Any]) -> Commitment:
        """The turn's commitment, once ``answer`` (an answer document) is known."""
        return Commitment(
            turn=turn, request=self.request, answer=commit(self._nonce, answer, "answer")
        )


def verify_commitment(
    record: UsageRecord,
    turn: int,
    nonce: str | bytes,
    request_body: Mapping[str, Any],
    answer: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> None:
    """Check that the (verified) record commits to this request and answer at ``turn``.

    ``request_body`` is the JSON object sent, ``answer`` the response, or its streamed
    chunks, or an answer document. Raises :class:`CommitmentError` saying what failed."""
    key = parse_nonce(nonce) if isinstance(nonce, str) else nonce
    held = next((c for c in record.commitments or () if c.turn == turn), None)
    if held is None:
        turns = ", ".join(str(c.turn) for c in record.commitments or ()) or "none"
        raise CommitmentError(
            f"the record of session {record.session_id} holds no commitment for turn {turn} "
            f"(it holds turns: {turns})"
        )
    if not hmac.compare_digest(
        commit(key, request_document(request_body), "request"), held.request
    ):
        raise CommitmentError(
            f"turn {turn}: the request does not match the commitment (a different request, "
            "or the wrong nonce)"
        )
    if not hmac.compare_digest(commit(key, answer_from(answer), "answer"), held.answer):
        raise CommitmentError(f"turn {turn}: the answer does not match the commitment")
