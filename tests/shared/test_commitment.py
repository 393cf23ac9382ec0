"""Content commitments: the nonce, the two documents, the keyed hashes and their check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

import pytest

from shared.canonical import jcs
from shared.commitment import (
    ANSWER_TAG,
    REQUEST_TAG,
    CommitmentError,
    TurnCommitment,
    answer_document,
    answer_from_chunks,
    answer_from_response,
    commit,
    nonce_of,
    parse_nonce,
    request_document,
    verify_commitment,
)
from shared.usage import UsageRecord
from tests.shared.conftest import make_record


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NONCE = bytes(range(32))
NONCE_TEXT = b64url(NONCE)
BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Où est \U0001f600?"}],
    "temperature": 0.7,
    "sanctum": {"commitment_nonce": NONCE_TEXT, "knowledge_bases": ["handbook"]},
}
RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Ici.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    "sanctum": {"session_id": "s"},
}
CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "Ic"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "i."}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "sanctum": {}},
    {"choices": [], "usage": {"prompt_tokens": 3}},
]


def record_with(body: dict[str, Any], answer: dict[str, Any], turn: int = 0) -> UsageRecord:
    held = TurnCommitment(NONCE, body).answered(turn, answer_from_response(answer))
    return make_record(0, "acme", "node-a").model_copy(update={"commitments": (held,)})


# --- the nonce ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32, 64])
def test_a_nonce_of_16_to_64_random_bytes_is_accepted(size: int) -> None:
    nonce = secrets.token_bytes(size)
    assert parse_nonce(b64url(nonce)) == nonce


@pytest.mark.parametrize(
    "text",
    [
        b64url(bytes(15)),
        b64url(bytes(65)),
        b64url(bytes(32)) + "=",  # padded
        base64.b64encode(bytes([0xFB] * 32)).decode(),  # standard alphabet: + and /
        "not base64url!" * 3,
        b64url(bytes(31))[:-1] + "B",  # unused low bits set: not the canonical spelling
        "A" * 10_000,
        "",
    ],
)
def test_anything_else_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(CommitmentError) as caught:
        parse_nonce(text)
    assert text not in str(caught.value) or not text


def test_the_nonce_comes_from_the_header_or_the_body_and_must_agree() -> None:
    assert nonce_of(BODY, None) == NONCE
    assert nonce_of({"model": "m"}, NONCE_TEXT) == NONCE
    assert nonce_of(BODY, NONCE_TEXT) == NONCE
    assert nonce_of({"model": "m", "sanctum": {"top_k": 2}}, None) is None
    with pytest.raises(CommitmentError, match="differ"):
        nonce_of(BODY, b64url(bytes(32)))
    with pytest.raises(CommitmentError, match="base64url string"):
        nonce_of({"sanctum": {"commitment_nonce": None}}, None)
    with pytest.raises(CommitmentError, match="base64url string"):
        nonce_of({"sanctum": {"commitment_nonce": 12}}, None)


# --- the documents and the hashes --------------------------------------------------------


def test_the_request_document_is_the_body_less_the_nonce() -> None:
    assert request_document(BODY) == {
        "model": "smollm2-135m",
        "messages": BODY["messages"],
        "temperature": 0.7,
        "sanctum": {"knowledge_bases": ["handbook"]},
    }
    only_nonce = {"model": "m", "sanctum": {"commitment_nonce": NONCE_TEXT}}
    assert request_document(only_nonce) == {"model": "m"}
    assert BODY["sanctum"]["commitment_nonce"] == NONCE_TEXT  # the caller's dict untouched


def test_the_hashes_are_hmac_sha256_of_the_tag_and_the_jcs_bytes() -> None:
    document = request_document(BODY)
    expected = hmac.new(NONCE, REQUEST_TAG + jcs(document), hashlib.sha256).hexdigest()
    assert commit(NONCE, document, "request") == expected
    answer = answer_from_response(RESPONSE)
    assert commit(NONCE, answer, "answer") == (
        hmac.new(NONCE, ANSWER_TAG + jcs(answer), hashlib.sha256).hexdigest()
    )
    # the tag separates the two: the same document hashes differently as each kind
    assert commit(NONCE, answer, "answer") != commit(NONCE, answer, "request")


def test_a_streamed_and_a_whole_answer_give_the_same_document() -> None:
    expected = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Ici."},
                "finish_reason": "stop",
            }
        ]
    }
    assert answer_from_response(RESPONSE) == expected
    assert answer_from_chunks(CHUNKS) == expected
    assert answer_from_response(expected) == expected  # an answer document is its own
    assert answer_document({"role": "assistant", "content": "Ici."}, "stop") == expected


def test_tool_calls_join_by_index_and_the_text_is_stripped() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    whole = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": calls},
                "finish_reason": "tool_calls",
            }
        ]
    }
    head = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    streamed = [head, {"choices": [{"index": 0, "delta": {"content": " \n"}}]}]
    for i, call in enumerate(calls):
        first = {**call, "index": i, "function": {**call["function"], "arguments": ""}}
        streamed.append({"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
        for piece in (call["function"]["arguments"][:2], call["function"]["arguments"][2:]):
            rest = {"index": i, "function": {"arguments": piece}}
            streamed.append({"choices": [{"index": 0, "delta": {"tool_calls": [rest]}}]})
    streamed.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    assert answer_from_chunks(streamed) == answer_from_response(whole)
    assert answer_from_response(whole)["choices"][0]["message"]["tool_calls"] == calls


# --- verifying -------------------------------------------------------------------------------


def test_the_right_transcript_and_nonce_verify() -> None:
    record = record_with(BODY, RESPONSE)
    verify_commitment(record, 0, NONCE_TEXT, BODY, RESPONSE)
    verify_commitment(record, 0, NONCE, BODY, CHUNKS)


def test_one_changed_byte_of_request_answer_or_nonce_fails() -> None:
    record = record_with(BODY, RESPONSE)
    asked = {**BODY, "messages": [{"role": "user", "content": "Où est \U0001f601?"}]}
    with pytest.raises(CommitmentError, match="turn 0: the request does not match"):
        verify_commitment(record, 0, NONCE, asked, RESPONSE)
    told = [*CHUNKS]
    told[2] = {"choices": [{"index": 0, "delta": {"content": "i!"}}]}
    with pytest.raises(CommitmentError, match="turn 0: the answer does not match"):
        verify_commitment(record, 0, NONCE, BODY, told)
    wrong = bytes([NONCE[0] ^ 1]) + NONCE[1:]
    with pytest.raises(CommitmentError, match=r"request does not match .*wrong nonce"):
        verify_commitment(record, 0, wrong, BODY, RESPONSE)
    with pytest.raises(CommitmentError, match=r"no commitment for turn 1 .*turns: 0"):
        verify_commitment(record, 1, NONCE, BODY, RESPONSE)


def test_the_node_side_holder_never_shows_its_nonce() -> None:
    holder = TurnCommitment(NONCE, BODY)
    assert NONCE_TEXT not in repr(holder) and NONCE.hex() not in repr(holder)
    assert "nonce withheld" in repr(holder)


def test_a_request_json_cannot_hold_is_refused_without_quoting_it() -> None:
    with pytest.raises(CommitmentError, match="lone surrogate") as caught:
        commit(NONCE, {"messages": [{"content": "secret\ud800"}]}, "request")
    assert "secret" not in str(caught.value)
