"""Content commitments through a real node and the bundled model, with the openai SDK.

The client sends a nonce of its own; the record the node signs at teardown commits to
what was asked and answered, and only that request, that answer and that nonce open it.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shared.cli.main import main
from shared.commitment import NONCE_HEADER, CommitmentError, verify_commitment
from shared.models import DEFAULT_MODEL_NAME
from shared.usage import UsageRecord
from tests.canary import new_marker, texts_containing
from tests.conftest import NODE, Node, Tenant, Tenants

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME


def new_nonce() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


class Recorder:
    """An openai SDK client whose sent request bodies are kept, as a client would."""

    def __init__(self, node: Node, tenant: Tenant) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._http = httpx.Client(event_hooks={"request": [self._keep]}, timeout=120)
        self.sdk = openai.OpenAI(
            base_url=f"{node.api}/v1", api_key=tenant.key, max_retries=0, http_client=self._http
        )

    def _keep(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.read()))

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def alice(node: Node, tenants: Tenants) -> Iterator[Recorder]:
    recorder = Recorder(node, tenants.alice)
    yield recorder
    recorder.close()


def open_session(node: Node, tenant: Tenant) -> str:
    with node.client(tenant) as c:
        response = c.post("/sessions", json={"model": MODEL})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def teardown(node: Node, tenant: Tenant, sid: str) -> UsageRecord:
    return node.open_record(held_receipt(node, tenant, sid))


def held_receipt(node: Node, tenant: Tenant, sid: str) -> str:
    with node.client(tenant) as c:
        response = c.delete(f"/sessions/{sid}")
    assert response.status_code == 200, response.text
    return str(response.json()["usage_record"])


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def flip(text: str) -> str:
    """The same text with one character changed (a base64url nonce stays well formed)."""
    return text[:-2] + ("A" if text[-2] != "A" else "B") + text[-1]


def test_a_session_commits_to_each_turn_that_sent_a_nonce(
    node: Node, tenants: Tenants, alice: Recorder, tmp_path: Path
) -> None:
    sid = open_session(node, tenants.alice)
    session = {"X-Sanctum-Session": sid}
    first, third = new_nonce(), new_nonce()
    # turn 0: not streamed, the nonce in the body (the SDK's extra_body)
    whole = alice.sdk.chat.completions.create(
        model=MODEL,
        messages=ask("Name a colour."),
        max_tokens=8,
        temperature=0.3,
        extra_headers=session,
        extra_body={"sanctum": {"commitment_nonce": first}},
    ).model_dump()
    # turn 1: no nonce, no commitment
    alice.sdk.chat.completions.create(
        model=MODEL, messages=ask("Name a fruit."), max_tokens=4, extra_headers=session
    )
    # turn 2: streamed, the nonce in the header
    chunks = [
        chunk.model_dump()
        for chunk in alice.sdk.chat.completions.create(
            model=MODEL,
            messages=ask("Name an animal."),
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={**session, NONCE_HEADER: third},
        )
    ]
    held = held_receipt(node, tenants.alice, sid)
    record = node.open_record(held)
    assert record.request_count == 3
    assert [c.turn for c in record.commitments or ()] == [0, 2]

    asked0, asked2 = alice.bodies[0], alice.bodies[2]
    assert "".join(str(c["choices"][0]["delta"]["content"] or "") for c in chunks if c["choices"])
    verify_commitment(record, 0, first, asked0, whole)
    verify_commitment(record, 2, third, asked2, chunks)

    # one byte changed anywhere, and it no longer opens
    for turn, nonce, asked, answer in ((0, first, asked0, whole), (2, third, asked2, chunks)):
        changed = json.loads(json.dumps(asked))
        changed["messages"][0]["content"] += "?"
        with pytest.raises(CommitmentError, match="request does not match"):
            verify_commitment(record, turn, nonce, changed, answer)
        with pytest.raises(CommitmentError, match="request does not match"):
            verify_commitment(record, turn, flip(nonce), asked, answer)
        with pytest.raises(CommitmentError, match="answer does not match"):
            verify_commitment(record, turn, nonce, asked, _changed_answer(answer))
    with pytest.raises(CommitmentError, match="no commitment for turn 1"):
        verify_commitment(record, 1, first, alice.bodies[1], whole)

    # and as a client would check it offline, with the saved files and the node's key
    files = {name: tmp_path / name for name in ("held.jws", "req.json", "ans.json")}
    files["held.jws"].write_text(held)
    files["req.json"].write_text(json.dumps(asked2))
    files["ans.json"].write_text(json.dumps(chunks))
    args = ["verify", "--commitment", files["held.jws"], "--request", files["req.json"]]
    args += ["--answer", files["ans.json"], "--node-key", node.keys / f"{NODE}.pub"]
    assert main([*map(str, args), "--nonce", third, "--turn", "2"]) == 0
    assert main([*map(str, args), "--nonce", flip(third), "--turn", "2"]) == 1


def _changed_answer(answer: Any) -> Any:
    changed = json.loads(json.dumps(answer))
    if isinstance(changed, list):  # chunks: one more character in the streamed text
        changed.insert(1, {"choices": [{"index": 0, "delta": {"content": "x"}}]})
    else:
        changed["choices"][0]["message"]["content"] += "x"
    return changed


def test_a_one_shot_call_commits_in_the_record_it_returns(
    node: Node, alice: Recorder, tenants: Tenants
) -> None:
    nonce = new_nonce()
    response = alice.sdk.chat.completions.create(
        model=MODEL,
        messages=ask("Say hello."),
        max_tokens=6,
        extra_body={"sanctum": {"commitment_nonce": nonce}},
    ).model_dump()
    record = node.open_record(response["sanctum"]["usage_record"])
    assert record.ended_by == "one_shot"
    verify_commitment(record, 0, nonce, alice.bodies[0], response)


def test_a_call_without_a_nonce_carries_no_commitments(node: Node, alice: Recorder) -> None:
    response = alice.sdk.chat.completions.create(
        model=MODEL, messages=ask("Say hello."), max_tokens=4
    ).model_dump()
    record = node.open_record(response["sanctum"]["usage_record"])
    assert record.commitments is None
    assert "commitments" not in record.document()


@pytest.mark.parametrize(
    "nonce",
    [
        base64.urlsafe_b64encode(bytes(8)).rstrip(b"=").decode(),  # too short
        base64.urlsafe_b64encode(bytes(32)).decode(),  # padded
        "not a nonce at all, not even base64url",
    ],
)
@pytest.mark.parametrize("where", ["body", "header"])
def test_a_bad_nonce_is_refused_with_400_without_echoing_it(
    node: Node, alice: Recorder, nonce: str, where: str
) -> None:
    extra: dict[str, Any] = (
        {"extra_body": {"sanctum": {"commitment_nonce": nonce}}}
        if where == "body"
        else {"extra_headers": {NONCE_HEADER: nonce}}
    )
    with pytest.raises(openai.BadRequestError) as caught:
        alice.sdk.chat.completions.create(
            model=MODEL, messages=ask("Say hello."), max_tokens=4, **extra
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_commitment"
    assert "commitment nonce" in error["message"]
    assert nonce not in json.dumps(error)


@pytest.mark.parametrize("where", ["body", "header"])
def test_a_nonce_sent_to_completions_is_refused_not_ignored(
    node: Node, alice: Recorder, where: str
) -> None:
    nonce = new_nonce()
    extra: dict[str, Any] = (
        {"extra_body": {"sanctum": {"commitment_nonce": nonce}}}
        if where == "body"
        else {"extra_headers": {NONCE_HEADER: nonce}}
    )
    with pytest.raises(openai.BadRequestError) as caught:
        alice.sdk.completions.create(model=MODEL, prompt="Say hello.", max_tokens=4, **extra)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "commitment_unsupported"
    assert nonce not in json.dumps(error)


def test_neither_the_prompt_nor_the_nonce_reaches_the_logs(
    node: Node, tenants: Tenants, alice: Recorder
) -> None:
    marker, nonce = new_marker(), new_nonce()
    sid = open_session(node, tenants.alice)
    for stream in (False, True):
        result = alice.sdk.chat.completions.create(
            model=MODEL,
            messages=ask(f"Repeat after me: {marker}"),
            max_tokens=8,
            stream=stream,
            extra_headers={"X-Sanctum-Session": sid, NONCE_HEADER: nonce},
        )
        if stream:
            list(result)  # type: ignore[arg-type]
    record = teardown(node, tenants.alice, sid)
    assert record.commitments is not None and len(record.commitments) == 2
    logs = {"node output": "".join(node.output)}
    assert texts_containing(marker, logs) == []
    assert nonce not in logs["node output"]
    for held in record.commitments:
        assert held.request not in logs["node output"]
        assert held.answer not in logs["node output"]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_a_tool_call_answer_commits_the_same_streamed_or_whole(
    node: Node, tenants: Tenants, alice: Recorder
) -> None:
    sid = open_session(node, tenants.alice)
    nonces = [new_nonce(), new_nonce()]
    answers: list[Any] = []
    for stream, nonce in zip((False, True), nonces, strict=True):
        result = alice.sdk.chat.completions.create(
            model=MODEL,
            messages=ask("What is the weather like in Paris today?"),
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=0,
            stream=stream,
            extra_headers={"X-Sanctum-Session": sid, NONCE_HEADER: nonce},
        )
        answers.append(
            [c.model_dump() for c in result] if stream else result.model_dump()  # type: ignore[union-attr]
        )
    record = teardown(node, tenants.alice, sid)
    whole, chunks = answers
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert any(c["choices"] and c["choices"][0]["delta"]["tool_calls"] for c in chunks)
    verify_commitment(record, 0, nonces[0], alice.bodies[0], whole)
    verify_commitment(record, 1, nonces[1], alice.bodies[1], chunks)
    changed = json.loads(json.dumps(whole))
    changed["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] += " "
    with pytest.raises(CommitmentError, match="answer does not match"):
        verify_commitment(record, 0, nonces[0], alice.bodies[0], changed)
