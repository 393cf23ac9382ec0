"""Expensive but well-formed requests, shared by the hostile-requests test (what each
gets back) and its benchmark (what each costs another client)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from shared.models import DEFAULT_MODEL_NAME
from tests.pdf import make_slow_pdf

MODEL = DEFAULT_MODEL_NAME
MARKER = "HOSTILE-CONTENT-5b1e"
BODY_LIMIT = 1_048_576
# The node setting the slow PDF meets (the default is 10 s; 3 keeps the run short).
PARSE_TIMEOUT = {"SANCTUM_DP_RETRIEVAL__PARSE_TIMEOUT_SECONDS": "3"}


@dataclass(frozen=True)
class Hostile:
    """One request: how to send it, and what it must get back (``code`` None: 200)."""

    name: str
    send: Callable[[httpx.Client], httpx.Response]
    status: int
    code: str | None = None
    names: str = ""  # what the error message must say (the limit)
    slow: bool = False  # seconds of work: the other client is answered before it ends


def _chat(messages: list[dict[str, str]], **extra: object) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": 4, "messages": messages, **extra}


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _many_messages(m: httpx.Client) -> httpx.Response:
    messages = [_user("")] * 25_000
    messages[-1] = _user(MARKER)
    body = _chat(messages)
    assert len(httpx.Request("POST", "/", json=body).content) < BODY_LIMIT
    return m.post("/chat/completions", json=body)


def _near_body_limit(m: httpx.Client) -> httpx.Response:
    content = MARKER + "x" * (BODY_LIMIT - 300)
    return m.post("/chat/completions", json=_chat([_user(content)]))


def _near_char_limit(m: httpx.Client) -> httpx.Response:
    content = (MARKER + " " + "word " * 60_000)[:262_000]
    return m.post("/chat/completions", json=_chat([_user(content)]))


STOPS = [f"{i:02d}" + "q" * 126 for i in range(16)]  # the most allowed, each the longest


def _most_stops(m: httpx.Client) -> httpx.Response:
    body = _chat([_user("Count from one to twenty.")], stop=STOPS, max_tokens=64)
    return m.post("/chat/completions", json=body)


def _deep_json(m: httpx.Client) -> httpx.Response:
    depth = 200_000
    raw = (
        b'{"model": "' + MODEL.encode() + b'", "max_tokens": 4, "messages": '
        b'[{"role": "user", "content": "'
        + MARKER.encode()
        + b'"}], "metadata": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    assert len(raw) < BODY_LIMIT
    return m.post("/chat/completions", content=raw, headers={"Content-Type": "application/json"})


def _slow_pdf(m: httpx.Client) -> httpx.Response:
    """About a hundred seconds of pypdf's time in 100 KB."""
    sid = m.post("/sessions", json={"model": MODEL}).json()["id"]
    try:
        doc = {
            "name": "report.pdf",
            "content": base64.b64encode(make_slow_pdf(10_000_000)).decode(),
        }
        return m.post(f"/sessions/{sid}/documents", json=doc)
    finally:
        m.delete(f"/sessions/{sid}")


EMBEDDING_INPUTS = [
    f"{MARKER} input {i}: " + "a quiet harbour town at dawn " * 8 for i in range(256)
]


def _big_embeddings(m: httpx.Client) -> httpx.Response:
    """256 inputs of about 55 tokens: under the limits, seconds of the embedder's time."""
    return m.post("/embeddings", json={"model": "all-MiniLM-L6-v2", "input": EMBEDDING_INPUTS})


HOSTILE = [
    Hostile(
        "25,000 messages under the body limit",
        _many_messages,
        400,
        "too_many_messages",
        "at most 2048",
    ),
    Hostile(
        "one message near the body limit",
        _near_body_limit,
        400,
        "request_too_large",
        "at most 262144",
    ),
    Hostile(
        "one message just under the character limit",
        _near_char_limit,
        400,
        "context_length_exceeded",
        "tokens",
    ),
    Hostile("16 stop strings of 128 characters", _most_stops, 200),
    Hostile("JSON nested 200,000 deep", _deep_json, 400, "invalid_json", "nested"),
    Hostile(
        "a PDF crafted to be slow, as a session document",
        _slow_pdf,
        422,
        "document_too_slow",
        "longer than 3 seconds",
        slow=True,
    ),
    Hostile("256 embedding inputs (14,000 tokens)", _big_embeddings, 200, slow=True),
]
