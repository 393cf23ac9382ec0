"""Every error a caller can cause, through the real HTTP server with the real model.

Each answer must carry its status and OpenAI's error shape; none may be a 500 or hang.
"""

from __future__ import annotations

import json

import httpx
import pytest

from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenants

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
CHAT = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_missing_key_is_401(node: Node) -> None:
    r = httpx.post(f"{node.api}/v1/chat/completions", json=CHAT, timeout=60)
    assert_error(r, 401, "invalid_api_key")


def test_wrong_key_is_401(node: Node, tenants: Tenants) -> None:
    forged = tenants.alice.key[:-4] + "AAAA"
    r = httpx.post(
        f"{node.api}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {forged}"},
        timeout=60,
    )
    assert_error(r, 401, "invalid_api_key")


def test_malformed_key_is_401(node: Node) -> None:
    r = httpx.get(f"{node.api}/v1/models", headers={"Authorization": "Bearer nonsense"}, timeout=60)
    assert_error(r, 401)


def test_model_not_allowed_is_403(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.carol) as c:
        assert_error(c.post("/chat/completions", json=CHAT), 403)
        assert c.get("/models").json()["data"] == []


def test_unknown_model_is_404(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        err = assert_error(c.post("/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
        assert err["param"] == "model"


def test_unknown_session_is_404(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        r = c.post("/chat/completions", json=CHAT, headers={"X-Sanctum-Session": "sess_nope"})
        assert_error(r, 404)
        assert_error(c.delete("/sessions/sess_nope"), 404)


def test_another_clients_session_is_404(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as alice, node.client(tenants.bob) as bob:
        sid = alice.post("/sessions", json={"model": MODEL}).json()["id"]
        try:
            r = bob.post("/chat/completions", json=CHAT, headers={"X-Sanctum-Session": sid})
            assert_error(r, 404)
            assert_error(bob.delete(f"/sessions/{sid}"), 404)
        finally:
            assert alice.delete(f"/sessions/{sid}").status_code == 200


def test_prompt_longer_than_context_is_400(node: Node, tenants: Tenants) -> None:
    long_text = "word " * 4000  # well past 2048 tokens, well under the body limit
    body = {**CHAT, "messages": [{"role": "user", "content": long_text}]}
    with node.client(tenants.alice) as c:
        err = assert_error(c.post("/chat/completions", json=body), 400, "context_length_exceeded")
        assert "context holds 2048" in err["message"]
        # and streamed: the error comes before any event
        err = assert_error(c.post("/chat/completions", json={**body, "stream": True}), 400)
        assert "tokens" in err["message"]


def test_body_over_limit_is_413(node: Node, tenants: Tenants) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    with node.client(tenants.alice) as c:
        assert_error(c.post("/chat/completions", json=huge), 413, "payload_too_large")


def test_body_over_limit_without_length_is_413(node: Node, tenants: Tenants) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    with node.client(tenants.alice) as c:
        r = c.post(
            "/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(r, 413)


def test_malformed_json_is_400(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        r = c.post(
            "/chat/completions", content=b'{"model": ', headers={"Content-Type": "application/json"}
        )
        assert_error(r, 400, "invalid_json")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", ""]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ],
)
def test_out_of_range_parameters_are_422(
    node: Node, tenants: Tenants, change: dict, param: str
) -> None:
    with node.client(tenants.alice) as c:
        err = assert_error(c.post("/chat/completions", json={**CHAT, **change}), 422)
        assert err["param"] == param


def test_validation_error_does_not_echo_content(node: Node, tenants: Tenants) -> None:
    secret = "do-not-echo-7f3a"
    body = {**CHAT, "messages": [{"role": "wizard", "content": secret}]}
    with node.client(tenants.alice) as c:
        r = c.post("/chat/completions", json=body)
    assert r.status_code == 422
    assert secret not in r.text


@pytest.mark.parametrize(
    ("change", "param"),
    [({"n": 2}, "n"), ({"functions": [{"name": "f", "parameters": {}}]}, "functions")],
)
def test_unsupported_features_are_400(
    node: Node, tenants: Tenants, change: dict, param: str
) -> None:
    with node.client(tenants.alice) as c:
        err = assert_error(c.post("/chat/completions", json={**CHAT, **change}), 400)
        assert err["param"] == param


def test_max_tokens_over_client_limit_is_400(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.dave) as c:
        err = assert_error(c.post("/chat/completions", json={**CHAT, "max_tokens": 65}), 400)
        assert "limit of 64" in err["message"]


def test_too_many_sessions_is_429(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.dave) as c:
        opened = [c.post("/sessions", json={"model": MODEL}).json()["id"] for _ in range(2)]
        try:
            assert_error(c.post("/sessions", json={"model": MODEL}), 429)
            # a one-shot call is a session too
            assert_error(c.post("/chat/completions", json=CHAT), 429)
        finally:
            for sid in opened:
                assert c.delete(f"/sessions/{sid}").status_code == 200
        # with the sessions gone, the client may open one again
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        assert c.delete(f"/sessions/{sid}").status_code == 200


def test_session_ttl_over_maximum_is_400(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        assert_error(c.post("/sessions", json={"model": MODEL, "ttl": 10**9}), 400)


def test_session_bound_to_its_model(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
        try:
            r = c.post(
                "/chat/completions",
                json={**CHAT, "model": "gpt-9"},
                headers={"X-Sanctum-Session": sid},
            )
            err = assert_error(r, 400)
            assert err["param"] == "model" and MODEL in err["message"]
        finally:
            c.delete(f"/sessions/{sid}")


def test_unknown_route_is_404_in_openai_shape(node: Node, tenants: Tenants) -> None:
    with node.client(tenants.alice) as c:
        assert_error(c.get("/nothing-here"), 404)


def test_management_routes_are_not_on_the_client_listener(node: Node) -> None:
    assert httpx.get(f"{node.api}/internal/health", timeout=60).status_code == 404
    assert httpx.get(f"{node.management}/v1/models", timeout=60).status_code == 404


def test_streamed_answer_ends_with_done(node: Node, tenants: Tenants) -> None:
    with (
        node.client(tenants.alice) as c,
        c.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as r,
    ):
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}),
        ("/completions", {"model": MODEL, "prompt": "a\udfffb", "max_tokens": 2}),
        ("/chat/completions", {**CHAT, "stop": ["\ud83d"]}),
    ],
)
def test_text_that_is_not_unicode_is_422_not_500(
    node: Node, tenants: Tenants, path: str, body: dict
) -> None:
    """JSON can carry lone surrogates that no encoder takes; they are refused up front."""
    with node.client(tenants.alice) as c:
        r = c.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    err = assert_error(r, 422, "invalid_parameter")
    assert "lone surrogate" in err["message"] and "function-" not in err["message"]
