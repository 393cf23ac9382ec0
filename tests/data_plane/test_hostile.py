"""Expensive but well-formed requests, through the real HTTP server and model.

Each hostile request is sent by one client while another client's small chat (in a
session with a document of its own, so its query goes through the embedder too) runs
beside it. The hostile request must get a clear 4xx in OpenAI's shape that names the
limit and never echoes what was sent, or complete; the other chat must be answered. How
long that chat took beside each is measured in ``make bench`` (tests/bench/hostile.py,
docs/benchmarks.md), not asserted here: no test fails on a wall-clock time.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node
from tests.pdf import make_slow_pdf

pytestmark = [pytest.mark.model, pytest.mark.embedder]

MODEL = DEFAULT_MODEL_NAME
MARKER = "HOSTILE-CONTENT-5b1e"
BODY_LIMIT = 1_048_576


@dataclass
class Hostile:
    node: Node
    mallory: Tenant
    alice: Tenant
    alice_session: str


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec) -> Iterator[Hostile]:
    node = new_node(
        tmp_path_factory.mktemp("hostile"),
        SANCTUM_DP_RETRIEVAL__PARSE_TIMEOUT_SECONDS="3",
    )
    mallory = make_tenant(
        "mallory", (MODEL,), embeddings=True, limits=ClientLimits(max_sessions=16)
    )
    alice = make_tenant("alice", (MODEL,))
    node.start()
    node.push([model_spec], [mallory, alice])
    with node.client(alice) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        doc = {"name": "boat.md", "text": "The ferry to the island leaves at nine."}
        assert c.post(f"/sessions/{sid}/documents", json=doc).status_code == 201
    yield Hostile(node, mallory, alice, sid)
    node.stop()


def alice_chat(h: Hostile) -> httpx.Response:
    with h.node.client(h.alice) as c:
        return c.post(
            "/chat/completions",
            json={
                "model": MODEL,
                "max_tokens": 4,
                "temperature": 0,
                "messages": [{"role": "user", "content": "When does the ferry leave?"}],
            },
            headers={"X-Sanctum-Session": h.alice_session},
        )


def beside(
    h: Hostile, send: Callable[[httpx.Client], httpx.Response], *, slow: bool = False
) -> httpx.Response:
    """Send mallory's request and, while it is in flight, alice's chat; alice must be
    answered (with ``slow``: before mallory's seconds of work are done). Returns
    mallory's answer."""
    with ThreadPoolExecutor(1) as pool, h.node.client(h.mallory, timeout=300) as m:
        pending = pool.submit(send, m)
        time.sleep(0.05)  # its body is on its way
        started = time.monotonic()
        theirs = alice_chat(h)
        took = time.monotonic() - started
        overtaken = not pending.done()
        answer = pending.result()
    assert theirs.status_code == 200, theirs.text
    assert overtaken or not slow
    print(f"alice's chat took {took:.3f} s beside it; mallory got {answer.status_code}")
    return answer


def assert_refused(r: httpx.Response, status: int, code: str, names: str) -> None:
    assert r.status_code == status, r.text[:300]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert names in error["message"]
    assert MARKER not in r.text


def chat(messages: list[dict[str, str]], **extra: object) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": 4, "messages": messages, **extra}


def test_tens_of_thousands_of_messages_under_the_body_limit(hostile: Hostile) -> None:
    messages = [{"role": "user", "content": ""}] * 25_000
    messages[-1] = {"role": "user", "content": MARKER}
    body = chat(messages)
    assert len(httpx.Request("POST", "/", json=body).content) < BODY_LIMIT
    r = beside(hostile, lambda m: m.post("/chat/completions", json=body))
    assert_refused(r, 400, "too_many_messages", "at most 2048")


def test_one_message_near_the_body_limit(hostile: Hostile) -> None:
    content = MARKER + "x" * (BODY_LIMIT - 300)
    r = beside(hostile, lambda m: m.post("/chat/completions", json=chat([_user(content)])))
    assert_refused(r, 400, "request_too_large", "at most 262144")


def test_one_message_just_under_the_character_limit(hostile: Hostile) -> None:
    """Allowed in, tokenized off the event loop, and refused for the context."""
    content = (MARKER + " " + "word " * 60_000)[:262_000]
    r = beside(hostile, lambda m: m.post("/chat/completions", json=chat([_user(content)])))
    assert_refused(r, 400, "context_length_exceeded", "tokens")


def test_the_most_stop_strings_allowed(hostile: Hostile) -> None:
    stops = [f"{i:02d}" + "q" * 126 for i in range(16)]  # 16 of 128 characters each
    body = chat([_user("Count from one to twenty.")], stop=stops, max_tokens=64)
    r = beside(hostile, lambda m: m.post("/chat/completions", json=body))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0
    too_many = hostile.node.client(hostile.mallory).post(
        "/chat/completions", json={**body, "stop": [*stops, "one more"]}
    )
    assert_refused(too_many, 400, "too_many_stop_sequences", "at most 16")
    too_long = hostile.node.client(hostile.mallory).post(
        "/chat/completions", json={**body, "stop": [MARKER * 20]}
    )
    assert_refused(too_long, 400, "stop_sequence_too_long", "at most 128 characters")


def test_deeply_nested_json(hostile: Hostile) -> None:
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

    def send(m: httpx.Client) -> httpx.Response:
        return m.post(
            "/chat/completions", content=raw, headers={"Content-Type": "application/json"}
        )

    r = beside(hostile, send)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["code"] == "invalid_json" and MARKER not in r.text


def test_a_pdf_crafted_to_be_slow_as_a_session_document(hostile: Hostile) -> None:
    """About a hundred seconds of pypdf's time in 100 KB: the parser is stopped at its
    time limit (three seconds on this node) and the file refused."""
    pdf = make_slow_pdf(10_000_000)
    with hostile.node.client(hostile.mallory) as m:
        sid = m.post("/sessions", json={"model": MODEL}).json()["id"]
    doc = {"name": "report.pdf", "content": base64.b64encode(pdf).decode()}
    r = beside(hostile, lambda m: m.post(f"/sessions/{sid}/documents", json=doc), slow=True)
    assert_refused(r, 422, "document_too_slow", "longer than 3 seconds")
    # The parser is back for the next file.
    from tests.pdf import make_pdf

    ok = {"name": "ok.pdf", "content": base64.b64encode(make_pdf("Boats at nine.")).decode()}
    with hostile.node.client(hostile.mallory) as m:
        added = m.post(f"/sessions/{sid}/documents", json=ok)
        assert added.status_code == 201, added.text
        assert m.delete(f"/sessions/{sid}").status_code == 200


def test_a_large_embeddings_batch(hostile: Hostile) -> None:
    """256 inputs of about 55 tokens: it completes, on the embedder's thread, while the
    other client's query takes its turns between the batch's parts."""
    inputs = [f"{MARKER} input {i}: " + "a quiet harbour town at dawn " * 8 for i in range(256)]
    body = {"model": "all-MiniLM-L6-v2", "input": inputs}
    r = beside(hostile, lambda m: m.post("/embeddings", json=body), slow=True)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["data"]) == 256
    bigger = {**body, "input": [*inputs, *inputs]}
    with hostile.node.client(hostile.mallory) as m:
        assert_refused(m.post("/embeddings", json=bigger), 400, "too_many_inputs", "at most 256")


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}
