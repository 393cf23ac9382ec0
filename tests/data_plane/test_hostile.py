"""Expensive but well-formed requests, through the real HTTP server and model.

Each hostile request (``hostile_requests.HOSTILE``) is sent by one client while another
client's small chat (in a session with a document of its own, so its query goes through
the embedder too) runs beside it. The hostile request must get a clear 4xx in OpenAI's
shape that names the limit and never echoes what was sent, or complete; the other chat
must be answered, and for the requests that take seconds of work, answered before that
work is done. How long the other chat took beside each is measured in ``make bench``
(tests/bench/hostile.py, docs/benchmarks.md), not asserted here: no test fails on a
wall-clock time.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from tests.conftest import Node, Tenant, make_tenant, new_node
from tests.data_plane.hostile_requests import (
    HOSTILE,
    MARKER,
    MODEL,
    PARSE_TIMEOUT,
    STOPS,
    Hostile,
)
from tests.pdf import make_pdf

pytestmark = [pytest.mark.model, pytest.mark.embedder]


@dataclass
class Bystander:
    node: Node
    mallory: Tenant
    alice: Tenant
    alice_session: str

    def chat(self) -> httpx.Response:
        """Alice's small chat, in her session with its document."""
        with self.node.client(self.alice) as c:
            return c.post(
                "/chat/completions",
                json={
                    "model": MODEL,
                    "max_tokens": 4,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "When does the ferry leave?"}],
                },
                headers={"X-Sanctum-Session": self.alice_session},
            )


def start_bystander(node: Node, mallory: Tenant, alice: Tenant) -> Bystander:
    with node.client(alice) as c:
        sid = c.post("/sessions", json={"model": MODEL, "ttl": 3600}).json()["id"]
        doc = {"name": "boat.md", "text": "The ferry to the island leaves at nine."}
        assert c.post(f"/sessions/{sid}/documents", json=doc).status_code == 201
    return Bystander(node, mallory, alice, sid)


def tenants() -> tuple[Tenant, Tenant]:
    mallory = make_tenant(
        "mallory", (MODEL,), embeddings=True, limits=ClientLimits(max_sessions=16)
    )
    return mallory, make_tenant("alice", (MODEL,))


@pytest.fixture(scope="module")
def bystander(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec
) -> Iterator[Bystander]:
    node = new_node(tmp_path_factory.mktemp("hostile"), **PARSE_TIMEOUT)
    mallory, alice = tenants()
    node.start()
    node.push([model_spec], [mallory, alice])
    yield start_bystander(node, mallory, alice)
    node.stop()


def beside(b: Bystander, hostile: Hostile) -> tuple[httpx.Response, httpx.Response, float, bool]:
    """Send mallory's request and, while it is in flight, alice's chat. Returns
    mallory's answer, alice's, the seconds alice's took, and whether alice's came back
    while mallory's was still being worked on."""
    with ThreadPoolExecutor(1) as pool, b.node.client(b.mallory, timeout=300) as m:
        pending = pool.submit(hostile.send, m)
        time.sleep(0.05)  # its body is on its way
        started = time.monotonic()
        theirs = b.chat()
        took = time.monotonic() - started
        overtaken = not pending.done()
        return pending.result(), theirs, took, overtaken


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_a_hostile_request_gets_a_clear_answer_and_stalls_no_one(
    bystander: Bystander, hostile: Hostile
) -> None:
    answer, theirs, took, overtaken = beside(bystander, hostile)
    print(f"{hostile.name}: {answer.status_code}; alice's chat beside it took {took:.3f} s")
    assert theirs.status_code == 200, theirs.text
    assert overtaken or not hostile.slow
    assert answer.status_code == hostile.status, answer.text[:300]
    assert MARKER not in answer.text
    if hostile.code is not None:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == hostile.code
        assert hostile.names in error["message"]


def test_past_the_limits_just_beyond_the_hostile_ones(bystander: Bystander) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    with bystander.node.client(bystander.mallory) as m:
        too_many = m.post("/chat/completions", json={**body, "stop": [*STOPS, "one more"]})
        too_long = m.post("/chat/completions", json={**body, "stop": [MARKER * 20]})
        inputs = m.post("/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["x"] * 257})
    for r, code, names in (
        (too_many, "too_many_stop_sequences", "at most 16"),
        (too_long, "stop_sequence_too_long", "at most 128 characters"),
        (inputs, "too_many_inputs", "at most 256"),
    ):
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == code and names in r.json()["error"]["message"]
        assert MARKER not in r.text


def test_the_parser_is_back_for_the_next_file(bystander: Bystander) -> None:
    """After a file that took too long, the parser process was replaced."""
    slow = next(h for h in HOSTILE if h.code == "document_too_slow")
    with bystander.node.client(bystander.mallory, timeout=300) as m:
        assert slow.send(m).status_code == 422
        sid = m.post("/sessions", json={"model": MODEL}).json()["id"]
        pdf = make_pdf("Boats leave at nine.")
        doc = {"name": "ok.pdf", "content": base64.b64encode(pdf).decode()}
        added = m.post(f"/sessions/{sid}/documents", json=doc)
        assert added.status_code == 201, added.text
        assert m.delete(f"/sessions/{sid}").status_code == 200
