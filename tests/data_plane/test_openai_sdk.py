"""The official ``openai`` SDK against a real node with the real model."""

from __future__ import annotations

import httpx
import pytest

from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenants

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME


def test_models_lists_only_allowed_models(node: Node, tenants: Tenants) -> None:
    models = node.openai(tenants.alice).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert node.openai(tenants.carol).models.list().data == []


def test_chat_plain(node: Node, tenants: Tenants) -> None:
    reply = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": "What is the capital city of France? Answer in one sentence.",
            }
        ],
        max_tokens=24,
        temperature=0,
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streamed_with_usage(node: Node, tenants: Tenants) -> None:
    stream = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": "What is the capital city of France? Answer in one sentence.",
            }
        ],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1


def test_streamed_and_plain_agree_at_temperature_zero(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    kwargs = {
        "model": MODEL,
        "max_tokens": 32,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Name three colours."}],
    }
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kwargs, stream=True)
        if c.choices
    )
    assert plain == streamed


def test_seed_makes_sampling_repeatable(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    kwargs = {
        "model": MODEL,
        "max_tokens": 24,
        "temperature": 1.0,
        "top_p": 0.9,
        "messages": [{"role": "user", "content": "Write a word."}],
    }
    a = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    assert a == b


def test_stop_sequence_cuts_the_answer(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    kwargs = {
        "model": MODEL,
        "max_tokens": 40,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Count from 1 to 10, with commas."}],
    }
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    assert "4" in full
    cut = client.chat.completions.create(**kwargs, stop=["4"]).choices[0]
    assert cut.finish_reason == "stop"
    assert "4" not in cut.message.content
    assert full.startswith(cut.message.content)


def test_max_tokens_ends_with_length(node: Node, tenants: Tenants) -> None:
    reply = node.openai(tenants.alice).chat.completions.create(
        model=MODEL,
        max_tokens=3,
        temperature=0,
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_completions_plain_and_streamed(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    plain = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert plain.choices[0].text.strip()
    assert plain.usage.completion_tokens > 0
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        if c.choices
    )
    assert streamed == plain.choices[0].text


def _session(node: Node, key: str) -> str:
    r = httpx.post(
        f"{node.api}/v1/sessions",
        json={"model": MODEL, "ttl": 120},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_session_over_three_turns_remembers(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    sid = _session(node, tenants.alice.key)
    headers = {"X-Sanctum-Session": sid}

    def say(text: str) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            max_tokens=40,
            temperature=0,
            messages=[{"role": "user", "content": text}],
            extra_headers=headers,
        )
        return reply.choices[0].message.content

    say("Hello! My name is Zorblax. Please remember my name.")
    say("I like green apples.")
    answer = say("What is my name?")
    assert "Zorblax" in answer

    summary = httpx.delete(
        f"{node.api}/v1/sessions/{sid}",
        headers={"Authorization": f"Bearer {tenants.alice.key}"},
        timeout=60,
    ).json()
    assert summary["session_id"] == sid
    assert summary["requests"] == 3
    assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0
    assert summary["model"]["name"] == MODEL and len(summary["model"]["sha256"]) == 64
    assert summary["ended_by"] == "teardown"


def test_a_one_shot_call_does_not_remember(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    client.chat.completions.create(
        model=MODEL,
        max_tokens=16,
        temperature=0,
        messages=[{"role": "user", "content": "My name is Zorblax."}],
    )
    answer = (
        client.chat.completions.create(
            model=MODEL,
            max_tokens=24,
            temperature=0,
            messages=[{"role": "user", "content": "What is my name?"}],
        )
        .choices[0]
        .message.content
    )
    assert "Zorblax" not in answer


def test_resending_the_whole_conversation_in_a_session_is_understood(
    node: Node, tenants: Tenants
) -> None:
    """Stateless OpenAI tools resend history; the session must not double it."""
    client = node.openai(tenants.alice)
    sid = _session(node, tenants.alice.key)
    headers = {"X-Sanctum-Session": sid}
    first = [{"role": "user", "content": "My name is Zorblax."}]
    reply = (
        client.chat.completions.create(
            model=MODEL, max_tokens=16, temperature=0, messages=first, extra_headers=headers
        )
        .choices[0]
        .message.content
    )
    second = [
        *first,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "What is my name?"},
    ]
    r2 = client.chat.completions.create(
        model=MODEL, max_tokens=24, temperature=0, messages=second, extra_headers=headers
    )
    assert "Zorblax" in r2.choices[0].message.content
    # The prompt holds the conversation once: about what a fresh call with it would take.
    fresh = client.chat.completions.create(
        model=MODEL, max_tokens=1, temperature=0, messages=second
    )
    assert r2.usage.prompt_tokens == fresh.usage.prompt_tokens
    httpx.delete(
        f"{node.api}/v1/sessions/{sid}",
        headers={"Authorization": f"Bearer {tenants.alice.key}"},
        timeout=60,
    )
