"""Logprobs, the sampler set and stop strings, with the ``openai`` SDK against a real node
and the real model.

Every sampling field that OpenAI or llama-server accepts is either honoured (it changes
the answer as it should) or refused with a 400 that names it; none is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from data_plane.protocol import REFUSED
from shared.models import DEFAULT_MODEL_NAME, bundled_gguf_path
from tests.conftest import Node, Tenants

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
COUNT = [{"role": "user", "content": "Count from 1 to 20, with commas."}]
STORY = [{"role": "user", "content": "Write a short story about a cat."}]


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    """The model's own tokenizer (vocabulary only), to name token ids as a client would."""
    from llama_cpp import Llama

    llama = Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def token_id(vocab: Any, text: str) -> int:
    ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
    assert len(ids) == 1, "the test needs a text that is one token"
    return int(ids[0])


def chat(node: Node, tenants: Tenants, **kwargs: Any) -> Any:
    args = {"model": MODEL, "messages": STORY, "max_tokens": 24, "temperature": 0, **kwargs}
    return node.openai(tenants.alice).chat.completions.create(**args)


def text_of(node: Node, tenants: Tenants, **kwargs: Any) -> str:
    return chat(node, tenants, **kwargs).choices[0].message.content


# --- logprobs ----------------------------------------------------------------------------


def test_chat_logprobs_agree_with_the_greedy_choice(node: Node, tenants: Tenants) -> None:
    choice = chat(node, tenants, logprobs=True, top_logprobs=5).choices[0]
    content = choice.logprobs.content
    assert len(content) == 24 and choice.finish_reason == "length"
    assert b"".join(bytes(t.bytes) for t in content).decode() == choice.message.content
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 5
        tops = [a.logprob for a in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # At temperature 0 the chosen token is the likeliest one.
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].bytes == t.bytes
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)


def test_chat_logprobs_streamed_match_plain(node: Node, tenants: Tenants) -> None:
    plain = chat(node, tenants, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    streamed = [
        t
        for chunk in chat(node, tenants, logprobs=True, top_logprobs=2, stream=True)
        if chunk.choices and chunk.choices[0].logprobs
        for t in chunk.choices[0].logprobs.content
    ]
    assert [(t.token, t.bytes) for t in streamed] == [(t.token, t.bytes) for t in plain]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in plain])


def test_chat_logprobs_only_chosen_token_and_none_unasked(node: Node, tenants: Tenants) -> None:
    content = chat(node, tenants, logprobs=True, max_tokens=4).choices[0].logprobs.content
    assert len(content) == 4 and all(t.top_logprobs == [] for t in content)
    assert chat(node, tenants, max_tokens=4).choices[0].logprobs is None


def test_chat_logprobs_leave_out_a_stop_string(node: Node, tenants: Tenants) -> None:
    full = chat(node, tenants, messages=COUNT, max_tokens=40).choices[0].message.content
    assert "7" in full
    choice = chat(node, tenants, messages=COUNT, max_tokens=40, stop=["7"], logprobs=True)
    reply = choice.choices[0]
    assert reply.finish_reason == "stop"
    joined = b"".join(bytes(t.bytes) for t in reply.logprobs.content).decode()
    assert "7" not in joined and reply.message.content.startswith(joined)


def test_completions_legacy_logprobs(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    args = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8}
    plain = client.completions.create(**args, temperature=0, logprobs=3).choices[0]
    lp = plain.logprobs
    assert "".join(lp.tokens) == plain.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    offsets = [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    assert lp.text_offset == offsets
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3
        assert max(top, key=top.get) == token
        assert top[token] == pytest.approx(logprob)
    streamed = [
        t
        for c in client.completions.create(**args, temperature=0, logprobs=3, stream=True)
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.tokens
    ]
    assert streamed == lp.tokens


def test_logprobs_requests_that_cannot_be_answered(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        body = {"model": MODEL, "max_tokens": 2, "messages": STORY}
        r = c.post("/chat/completions", json={**body, "top_logprobs": 3})
        assert r.status_code == 422, r.text
        r = c.post("/chat/completions", json={**body, "logprobs": True, "top_logprobs": 21})
        assert r.status_code == 422, r.text
        r = c.post(
            "/completions",
            json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "logprobs": 1, "echo": True},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo", r.text


# --- the sampler set ----------------------------------------------------------------------

# Every sampling field of OpenAI's chat and completions APIs and of llama-server's, and what
# Sanctum does with it: honoured (tested below), refused (400 naming it), or ignored
# because it cannot change the answer (the reason is in docs/api.md).
HONOURED = {
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    # Chat only (test_structured_outputs.py); refused on /v1/completions (CHAT_ONLY).
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
# Honoured on chat, refused where they mean nothing: on /v1/completions.
CHAT_ONLY = {"response_format", "tools", "tool_choice"}
IGNORED = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "cache_prompt",
    "id_slot",
    "n_keep",
    "penalize_nl",
    "mirostat_tau",
    "mirostat_eta",
    "dynatemp_exponent",
    "xtc_threshold",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "return_tokens",
    "timings_per_token",
    "stream",
    "stream_options",
}
OPENAI_FIELDS = {
    "temperature", "top_p", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
    "stop", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "n",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call",
    "best_of", "suffix", "echo", "prediction", "audio", "modalities", "reasoning_effort",
    "verbosity", "web_search_options", "user", "metadata", "store", "service_tier",
    "prompt_cache_key", "safety_identifier", "stream", "stream_options",
}  # fmt: skip
LLAMA_SERVER_FIELDS = {
    "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "penalize_nl",
    "mirostat", "mirostat_tau", "mirostat_eta", "dynatemp_range", "dynatemp_exponent",
    "xtc_probability", "xtc_threshold", "dry_multiplier", "dry_base", "dry_allowed_length",
    "dry_penalty_last_n", "dry_sequence_breakers", "top_n_sigma", "tfs_z", "min_keep",
    "samplers", "grammar", "json_schema", "ignore_eos", "n_predict", "n_probs",
    "post_sampling_probs", "t_max_predict_ms", "n_keep", "cache_prompt", "id_slot",
    "return_tokens", "timings_per_token",
}  # fmt: skip

# A value of each refused field that would change the answer.
REFUSED_VALUES: dict[str, Any] = {
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "tool_choice": "required",
    "response_format": {"type": "json_object"},
    "best_of": 2,
    "suffix": "end",
    "prediction": {"type": "content", "content": "x"},
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "reasoning_effort": "high",
    "verbosity": "low",
    "web_search_options": {},
    "mirostat": 2,
    "dynatemp_range": 0.5,
    "xtc_probability": 0.5,
    "dry_multiplier": 0.8,
    "top_n_sigma": 1.0,
    "tfs_z": 0.5,
    "min_keep": 5,
    "samplers": ["top_k", "temperature"],
    "grammar": 'root ::= "a"',
    "json_schema": {"type": "object"},
    "ignore_eos": True,
    "n_predict": 5,
    "n_probs": 3,
    "post_sampling_probs": True,
    "t_max_predict_ms": 10,
}


def test_every_sampling_field_has_a_fate() -> None:
    refused = set(REFUSED) | {"n", "echo"}  # n > 1: a 400; echo: honoured on completions
    assert HONOURED & refused == CHAT_ONLY and IGNORED.isdisjoint(refused | HONOURED)
    assert (OPENAI_FIELDS | LLAMA_SERVER_FIELDS) - (HONOURED | refused | IGNORED) == set()
    assert set(REFUSED_VALUES) == set(REFUSED)


@pytest.mark.parametrize("field", sorted(REFUSED_VALUES))
def test_refused_fields_are_400_naming_them(node: Node, tenants: Tenants, field: str) -> None:
    body = {"model": MODEL, "max_tokens": 2, field: REFUSED_VALUES[field]}
    with node.client(tenants.alice) as c:
        for path, extra in (
            ("/chat/completions", {"messages": STORY}),
            ("/completions", {"prompt": "Hi"}),
        ):
            if field in CHAT_ONLY and path == "/chat/completions":
                continue  # honoured there
            r = c.post(path, json={**body, **extra})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == field


def test_neutral_values_of_refused_fields_are_accepted(node: Node, tenants: Tenants) -> None:
    reply = chat(
        node,
        tenants,
        max_tokens=2,
        extra_body={"mirostat": 0, "n_probs": 0, "ignore_eos": False, "response_format": None},
        n=1,
    )
    assert reply.choices[0].message.content


def test_ignored_fields_leave_the_answer_alone(node: Node, tenants: Tenants) -> None:
    base = text_of(node, tenants)
    ignored = {"user": "u-1", "metadata": {"k": "v"}, "store": True, "mirostat_tau": 3.0}
    assert text_of(node, tenants, extra_body=ignored) == base


def test_n_above_one_is_refused(node: Node, tenants: Tenants) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        chat(node, tenants, n=2)
    assert err.value.body["param"] == "n"


def sampled(node: Node, tenants: Tenants, **kwargs: Any) -> str:
    """An answer drawn at temperature 1.5 with a fixed seed (repeatable)."""
    args = {"temperature": 1.5, "seed": 7, "max_tokens": 32, **kwargs}
    return text_of(node, tenants, **args)


def test_seed_repeats_and_changes_the_draw(node: Node, tenants: Tenants) -> None:
    first = sampled(node, tenants)
    assert sampled(node, tenants) == first
    assert any(sampled(node, tenants, seed=s) != first for s in (8, 9, 10))


@pytest.mark.parametrize(
    "cut",
    [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 0.0001}],
    ids=["top_k", "min_p", "top_p"],
)
def test_cuts_to_one_token_make_sampling_greedy(
    node: Node, tenants: Tenants, cut: dict[str, Any]
) -> None:
    greedy = text_of(node, tenants, max_tokens=32)
    assert sampled(node, tenants) != greedy
    assert sampled(node, tenants, extra_body=cut) == greedy


def test_top_k_and_typical_p_change_the_draw(node: Node, tenants: Tenants) -> None:
    base = sampled(node, tenants)
    assert sampled(node, tenants, extra_body={"top_k": 3}) != base
    assert sampled(node, tenants, extra_body={"typical_p": 0.2}) != base


def repeats(node: Node, tenants: Tenants, **kwargs: Any) -> int:
    """Tokens of a greedy answer that appeared earlier in it."""
    content = chat(node, tenants, max_tokens=40, logprobs=True, **kwargs)
    tokens = [bytes(t.bytes) for t in content.choices[0].logprobs.content]
    return len(tokens) - len(set(tokens))


@pytest.mark.parametrize(
    "penalty",
    [
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
        {"extra_body": {"repeat_penalty": 1.8}},
    ],
    ids=["presence_penalty", "frequency_penalty", "repeat_penalty"],
)
def test_penalties_repeat_less(node: Node, tenants: Tenants, penalty: dict[str, Any]) -> None:
    assert repeats(node, tenants, **penalty) < repeats(node, tenants)


def test_repeat_last_n_zero_turns_penalties_off(node: Node, tenants: Tenants) -> None:
    plain = text_of(node, tenants, messages=COUNT, max_tokens=40)
    off = {"repeat_penalty": 1.8, "repeat_last_n": 0}
    assert text_of(node, tenants, messages=COUNT, max_tokens=40, extra_body=off) == plain


def test_a_banned_token_is_never_produced(node: Node, tenants: Tenants, vocab: Any) -> None:
    greedy = chat(node, tenants, messages=COUNT, max_tokens=40, logprobs=True)
    pieces = [bytes(t.bytes) for t in greedy.choices[0].logprobs.content]
    banned = b","
    assert banned in pieces  # the answer without the ban uses it
    bias = {str(token_id(vocab, banned.decode())): -100}
    for kwargs in ({}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.5, "seed": 2}):
        reply = chat(
            node, tenants, messages=COUNT, max_tokens=40, logprobs=True, logit_bias=bias, **kwargs
        ).choices[0]
        assert banned not in [bytes(t.bytes) for t in reply.logprobs.content]


def test_a_positive_bias_forces_a_token(node: Node, tenants: Tenants, vocab: Any) -> None:
    forced = token_id(vocab, " banana")
    reply = chat(node, tenants, max_tokens=3, logit_bias={str(forced): 100})
    assert reply.choices[0].message.content == " banana" * 3


def test_logit_bias_outside_the_vocabulary_is_400(node: Node, tenants: Tenants, vocab: Any) -> None:
    size = vocab.n_vocab()
    for key in (str(size), str(10**9)):
        with pytest.raises(openai.BadRequestError) as err:
            chat(node, tenants, max_tokens=2, logit_bias={key: 5})
        assert err.value.body["param"] == "logit_bias"
        assert key not in err.value.body["message"] or key == str(size)
    with node.client(tenants.alice) as c:
        body = {"model": MODEL, "max_tokens": 2, "messages": STORY, "logit_bias": {"x": 1}}
        assert c.post("/chat/completions", json=body).status_code == 422


def test_samplers_apply_to_completions(node: Node, tenants: Tenants) -> None:
    client = node.openai(tenants.alice)
    args = {"model": MODEL, "prompt": "One, two, three,", "max_tokens": 12, "temperature": 0}
    plain = client.completions.create(**args).choices[0].text
    penalised = client.completions.create(**args, frequency_penalty=2.0).choices[0].text
    assert penalised != plain


# --- stop strings -------------------------------------------------------------------------


def test_sixteen_stop_strings(node: Node, tenants: Tenants) -> None:
    full = text_of(node, tenants, messages=COUNT, max_tokens=40)
    assert "9" in full
    stops = [f"zz{i}qq" for i in range(15)] + ["9"]
    reply = chat(node, tenants, messages=COUNT, max_tokens=40, stop=stops).choices[0]
    assert reply.finish_reason == "stop"
    assert full.startswith(reply.message.content) and "9" not in reply.message.content
    with httpx.Client(base_url=f"{node.api}/v1", timeout=60) as c:
        body = {"model": MODEL, "messages": COUNT, "max_tokens": 2, "stop": [*stops, "x"]}
        r = c.post(
            "/chat/completions", json=body, headers={"Authorization": f"Bearer {tenants.alice.key}"}
        )
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_stop_sequences"
