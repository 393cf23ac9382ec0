"""Session lifecycle on a real node: expiry, shutdown, isolation between clients."""

from __future__ import annotations

import signal

import httpx
import pytest

from shared.config import ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenants, make_tenant, wait_until

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME


def test_idle_session_expires(fresh_node: Node, model_spec: ModelSpec) -> None:
    fresh_node.env["SANCTUM_DP_SESSIONS__SWEEP_INTERVAL_SECONDS"] = "0.2"
    fresh_node.start()
    tenant = make_tenant("t", (MODEL,))
    fresh_node.push([model_spec], [tenant])
    with fresh_node.client(tenant) as c:
        sid = c.post("/sessions", json={"model": MODEL, "ttl": 1}).json()["id"]
        body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
        assert (
            c.post("/chat/completions", json=body, headers={"X-Sanctum-Session": sid}).status_code
            == 200
        )
        assert wait_until(lambda: c.get(f"/sessions/{sid}").status_code == 404, timeout=10)
        assert c.delete(f"/sessions/{sid}").status_code == 404
    # The session leaves the store first; its record is written and the line logged after.
    assert wait_until(
        lambda: any(f"session={sid}" in line and "by=expiry" in line for line in fresh_node.output),
        timeout=10,
    )


def test_sigterm_ends_open_sessions_and_exits_zero(fresh_node: Node, model_spec: ModelSpec) -> None:
    fresh_node.start()
    tenant = make_tenant("t", (MODEL,))
    fresh_node.push([model_spec], [tenant])
    with fresh_node.client(tenant) as c:
        sid = c.post("/sessions", json={"model": MODEL}).json()["id"]
    assert fresh_node.stop(signal.SIGTERM) == 0
    log = "".join(fresh_node.output)
    assert f"session ended session={sid}" in log and "by=shutdown" in log
    assert "node stopped" in log


def test_one_client_cannot_see_anothers_conversation(node: Node, tenants: Tenants) -> None:
    """Same prompt prefix, different clients: bob's session never hears alice's secret."""
    alice, bob = node.openai(tenants.alice), node.openai(tenants.bob)
    auth = lambda t: {"Authorization": f"Bearer {t.key}"}  # noqa: E731
    sa = httpx.post(
        f"{node.api}/v1/sessions", json={"model": MODEL}, headers=auth(tenants.alice), timeout=60
    )
    sb = httpx.post(
        f"{node.api}/v1/sessions", json={"model": MODEL}, headers=auth(tenants.bob), timeout=60
    )
    a, b = sa.json()["id"], sb.json()["id"]
    try:
        alice.chat.completions.create(
            model=MODEL,
            max_tokens=16,
            temperature=0,
            messages=[
                {"role": "user", "content": "Hello! My name is Zorblax. Please remember my name."}
            ],
            extra_headers={"X-Sanctum-Session": a},
        )
        answer = (
            bob.chat.completions.create(
                model=MODEL,
                max_tokens=24,
                temperature=0,
                messages=[{"role": "user", "content": "What is my name?"}],
                extra_headers={"X-Sanctum-Session": b},
            )
            .choices[0]
            .message.content
        )
        assert "Zorblax" not in answer
        # and bob's session has its own history only: one request so far
    finally:
        ua = httpx.delete(
            f"{node.api}/v1/sessions/{a}", headers=auth(tenants.alice), timeout=60
        ).json()
        ub = httpx.delete(
            f"{node.api}/v1/sessions/{b}", headers=auth(tenants.bob), timeout=60
        ).json()
    assert ua["requests"] == 1 and ub["requests"] == 1
    assert ua["client_id"] == "alice" and ub["client_id"] == "bob"


def test_concurrent_request_on_a_busy_session_is_409(node: Node, tenants: Tenants) -> None:
    auth = {"Authorization": f"Bearer {tenants.alice.key}"}
    sid = httpx.post(
        f"{node.api}/v1/sessions", json={"model": MODEL}, headers=auth, timeout=60
    ).json()["id"]
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    headers = {**auth, "X-Sanctum-Session": sid}
    with httpx.stream(
        "POST", f"{node.api}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as first:
        lines = first.iter_lines()  # kept: dropping the iterator would close the stream
        next(lines)  # the first is under way
        second = httpx.post(
            f"{node.api}/v1/chat/completions", json=body, headers=headers, timeout=60
        )
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "conflict"
    # once the first stream is gone, the session takes requests again
    assert wait_until(
        lambda: (
            httpx.delete(f"{node.api}/v1/sessions/{sid}", headers=auth, timeout=60).status_code
            == 200
        ),
        timeout=10,
    )


def test_client_that_disconnects_frees_the_session_at_once(node: Node, tenants: Tenants) -> None:
    auth = {"Authorization": f"Bearer {tenants.alice.key}"}
    sid = httpx.post(
        f"{node.api}/v1/sessions", json={"model": MODEL}, headers=auth, timeout=60
    ).json()["id"]
    headers = {**auth, "X-Sanctum-Session": sid}
    body = {
        "model": MODEL,
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
    }
    with httpx.stream(
        "POST", f"{node.api}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        next(r.iter_lines())
    statuses: list[int] = []
    short = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}

    def next_request_succeeds() -> bool:
        statuses.append(
            httpx.post(
                f"{node.api}/v1/chat/completions", json=short, headers=headers, timeout=60
            ).status_code
        )
        return statuses[-1] == 200

    # Had decoding gone on, the session would stay busy for the whole 2000 tokens.
    assert wait_until(next_request_succeeds, timeout=60)
    assert set(statuses) <= {200, 409}  # "busy" until it lets go, never an error
    summary = httpx.delete(f"{node.api}/v1/sessions/{sid}", headers=auth, timeout=60).json()
    assert summary["requests"] == 2
    # the cut-off turn stopped early: nowhere near its 2000 tokens
    assert summary["completion_tokens"] < 500


def test_session_info_does_not_keep_it_alive(fresh_node: Node, model_spec: ModelSpec) -> None:
    fresh_node.env["SANCTUM_DP_SESSIONS__SWEEP_INTERVAL_SECONDS"] = "0.2"
    fresh_node.start()
    tenant = make_tenant("t", (MODEL,))
    fresh_node.push([model_spec], [tenant])
    with fresh_node.client(tenant) as c:
        sid = c.post("/sessions", json={"model": MODEL, "ttl": 1}).json()["id"]
        info = c.get(f"/sessions/{sid}").json()
        assert info["id"] == sid and info["model"] == MODEL and info["requests"] == 0
        assert wait_until(lambda: c.get(f"/sessions/{sid}").status_code == 404, timeout=10)


def test_a_full_node_refuses_clients_with_sessions_but_opens_a_first_one(
    fresh_node: Node, model_spec: ModelSpec
) -> None:
    """The node's own session limit: past it, a client that holds sessions gets 429 and
    one that holds none still gets its first, so a few clients can't fill the node."""
    fresh_node.env["SANCTUM_DP_SESSIONS__MAX_OPEN"] = "3"
    fresh_node.start()
    heavy, light = make_tenant("heavy", (MODEL,)), make_tenant("light", (MODEL,))
    fresh_node.push([model_spec], [heavy, light])
    with fresh_node.client(heavy) as h, fresh_node.client(light) as lt:
        held = [h.post("/sessions", json={"model": MODEL}) for _ in range(3)]
        assert [r.status_code for r in held] == [201] * 3
        refused = h.post("/sessions", json={"model": MODEL})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "node_sessions_full"
        assert refused.headers["retry-after"] == "5"
        first = lt.post("/sessions", json={"model": MODEL})
        assert first.status_code == 201
        assert lt.post("/sessions", json={"model": MODEL}).status_code == 429
