"""Rate limits, quotas and engine caps as clients see them, through the ``openai`` SDK
against a real node with the real model.

The SDK retries a 429 by itself after ``Retry-After`` when the header says it may;
every response it saw is recorded here with an httpx event hook, so the tests can tell
what happened under the SDK.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
HELLO = [{"role": "user", "content": "Say hello."}]


class Tenants:
    def __init__(self) -> None:
        self.rpm = make_tenant("rpm", (MODEL,), limits=ClientLimits(requests_per_minute=12))
        self.tpm = make_tenant("tpm", (MODEL,), limits=ClientLimits(tokens_per_minute=240))
        self.quota = make_tenant(
            "quota", (MODEL,), limits=ClientLimits(tokens_per_day=200, max_sessions=4)
        )
        self.capped = make_tenant(
            "capped", (MODEL,), limits=ClientLimits(max_running=1, max_queued=0)
        )
        self.free = make_tenant("free", (MODEL,))

    def all(self) -> list[Tenant]:
        return [self.rpm, self.tpm, self.quota, self.capped, self.free]


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec
) -> Iterator[tuple[Node, Tenants]]:
    node = new_node(tmp_path_factory.mktemp("limits"))
    tenants = Tenants()
    node.start()
    node.push([model_spec], tenants.all())
    yield node, tenants
    node.stop()


def sdk(node: Node, tenant: Tenant, seen: list[httpx.Response], retries: int = 2) -> Any:
    """The openai SDK, recording every response it gets (retries included)."""
    from openai import OpenAI

    http = httpx.Client(event_hooks={"response": [seen.append]}, timeout=120)
    return OpenAI(
        base_url=f"{node.api}/v1", api_key=tenant.key, max_retries=retries, http_client=http
    )


def test_past_requests_per_minute_the_sdk_waits_and_its_retry_succeeds(
    limited: tuple[Node, Tenants],
) -> None:
    node, t = limited
    seen: list[httpx.Response] = []
    with node.client(t.rpm) as c:
        for _ in range(12):  # each session opened takes one of the twelve
            r = c.post("/sessions", json={"model": MODEL})
            assert r.status_code == 201, r.text
            assert "x-ratelimit-remaining-requests" in r.headers
            assert c.delete(f"/sessions/{r.json()['id']}").status_code == 200  # free
        usage = c.get("/usage").json()
    assert usage["requests_per_minute"]["remaining"] == 0

    reply = sdk(node, t.rpm, seen).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, temperature=0
    )

    assert reply.choices[0].message.content
    assert [r.status_code for r in seen] == [429, 200]
    refused = seen[0]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 0 < int(refused.headers["retry-after"]) <= 5  # the SDK honours up to 60 s
    assert refused.headers["x-ratelimit-limit-requests"] == "12"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-should-retry"] == "true"
    assert seen[1].headers["x-ratelimit-limit-requests"] == "12"


def test_tokens_per_minute_count_the_prompt_and_max_tokens_before_the_turn_queues(
    limited: tuple[Node, Tenants],
) -> None:
    from openai import RateLimitError

    node, t = limited
    seen: list[httpx.Response] = []
    client = sdk(node, t.tpm, seen, retries=0)
    started = time.monotonic()
    first = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=100, temperature=0
    )
    # The bucket refills at 240/60 tokens a second meanwhile (a loaded machine is slow).
    refilled = 4 * (time.monotonic() - started)
    used = first.usage.prompt_tokens + first.usage.completion_tokens
    assert int(seen[-1].headers["x-ratelimit-remaining-tokens"]) <= 240 - used + 5 + refilled
    # A turn that costs more than the limit waits for a full bucket: refused until the
    # first turn's tokens are refilled (about 17 s after it), not only while it ran.
    with pytest.raises(RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=300)
    assert refused.value.code == "rate_limit_exceeded"
    assert "240 tokens per minute" in refused.value.message
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "240"


def test_a_spent_quota_is_refused_without_retries_until_it_is_raised(
    limited: tuple[Node, Tenants], model_spec: ModelSpec
) -> None:
    from openai import RateLimitError

    node, t = limited
    seen: list[httpx.Response] = []
    client = sdk(node, t.quota, seen, retries=2)
    spent = 0
    refused = None
    for _ in range(20):
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens=8, temperature=0
            )
        except RateLimitError as exc:
            refused = exc
            break
        spent += reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert refused is not None and 0 < spent <= 200
    assert refused.code == "insufficient_quota"
    assert refused.response.headers["x-should-retry"] == "false"
    assert [r.status_code for r in seen].count(429) == 1  # the SDK did not retry it
    with node.client(t.quota) as c:
        usage = c.get("/usage").json()["tokens_per_day"]
    assert (usage["limit"], usage["used"], usage["reserved"]) == (200, spent, 0)
    assert usage["remaining"] == 200 - spent

    # The admin raises the quota: the next signed config lets the client in again.
    t.quota.spec = t.quota.spec.model_copy(
        update={"limits": ClientLimits(tokens_per_day=10_000, max_sessions=4)}
    )
    node.push([model_spec], t.all())
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)
    assert reply.choices[0].message.content is not None
    with node.client(t.quota) as c:
        usage = c.get("/usage").json()["tokens_per_day"]
    assert usage["used"] > spent and usage["limit"] == 10_000


def test_a_client_at_its_engine_caps_gets_429_while_another_is_answered(
    limited: tuple[Node, Tenants],
) -> None:
    node, t = limited
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 400, "stream": True}
    with (
        node.client(t.capped) as capped,
        capped.stream("POST", "/completions", json=body) as running,
    ):
        assert running.status_code == 200
        lines = running.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # it is decoding
        refused = capped.post("/completions", json={**body, "stream": False})
        with node.client(t.free) as free:
            other = free.post("/completions", json={**body, "stream": False, "max_tokens": 4})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_generations"
    assert refused.headers["retry-after"] == "1"
    assert other.status_code == 200


def test_usage_is_the_clients_own_and_reading_it_costs_nothing(
    limited: tuple[Node, Tenants],
) -> None:
    node, t = limited
    with node.client(t.free) as c:
        answers = [c.get("/usage") for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    body = answers[-1].json()
    assert (body["object"], body["client_id"], body["node"]) == ("usage", "free", "node-1")
    assert body["requests_per_minute"] is None and body["tokens_per_minute"] is None
    assert body["tokens_per_day"]["limit"] is None
    assert "x-ratelimit-limit-requests" not in answers[-1].headers
    with node.client(t.rpm) as c:  # each key sees its own client's
        assert c.get("/usage").json()["client_id"] == "rpm"
    stranger = httpx.get(f"{node.api}/v1/usage", timeout=60)  # no key: nobody's
    assert stranger.status_code == 401 and "client_id" not in stranger.text
