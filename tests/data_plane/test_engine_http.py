"""The batching engine as clients see it over HTTP, on real ``data_plane serve`` nodes.

The engine's insides (slots, KV cells, parked state) are tested in process in
test_engine_scheduler.py.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, Tenants, make_tenant, new_node, wait_until
from tests.data_plane.engine_prompts import COUNTING, PROMPTS

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="module")
def small(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec
) -> Iterator[tuple[Node, Tenant]]:
    """A node with two sequences and room for one waiting generation."""
    node = new_node(
        tmp_path_factory.mktemp("small"),
        SANCTUM_DP_ENGINE__MAX_SEQUENCES="2",
        SANCTUM_DP_ENGINE__MAX_QUEUE="1",
        SANCTUM_DP_ENGINE__CONTEXT_SIZE="1024",
    )
    tenant = make_tenant("t", (MODEL,), limits=ClientLimits(max_sessions=16))
    node.start()
    node.push([model_spec], [tenant])
    yield node, tenant
    node.stop()


def _stream(node: Node, tenant: Tenant, stack: ExitStack, **extra: Any) -> Iterator[str]:
    """Open a streamed completion of COUNTING; its SSE lines (headers already in)."""
    headers = {"Authorization": f"Bearer {tenant.key}", **extra.pop("headers", {})}
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 1500, "stream": True, **extra}
    response = stack.enter_context(
        httpx.stream("POST", f"{node.api}/v1/completions", json=body, headers=headers, timeout=120)
    )
    assert response.status_code == 200, response.read()
    return response.iter_lines()


def _idle(node: Node) -> None:
    """Wait until the previous test's requests are gone (their one-shot sessions ended)."""
    assert wait_until(lambda: node.health()["sessions_open"] == 0, timeout=60)


def _next_text(lines: Iterator[str]) -> str:
    for line in lines:
        if line.startswith("data: {"):
            text = json.loads(line[6:])["choices"][0].get("text")
            if text:
                return str(text)
    raise AssertionError("the stream ended without text")


def test_past_the_queue_clients_get_429(small: tuple[Node, Tenant]) -> None:
    node, tenant = small
    _idle(node)
    with ExitStack() as stack:
        running = [_stream(node, tenant, stack) for _ in range(2)]
        for lines in running:
            _next_text(lines)  # both slots decode
        _stream(node, tenant, stack)  # accepted: waits for a slot
        refused = httpx.post(
            f"{node.api}/v1/completions",
            json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
            headers={"Authorization": f"Bearer {tenant.key}"},
            timeout=60,
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "engine_busy"
        assert refused.json()["error"]["type"] == "rate_limit_error"


def test_a_client_that_disconnects_mid_stream_frees_its_slot(small: tuple[Node, Tenant]) -> None:
    node, tenant = small
    _idle(node)
    auth = {"Authorization": f"Bearer {tenant.key}"}
    sid = httpx.post(f"{node.api}/v1/sessions", json={"model": MODEL}, headers=auth).json()["id"]
    with ExitStack() as stack:
        leaving = ExitStack()
        first = _stream(node, tenant, leaving, headers={"X-Sanctum-Session": sid})
        _next_text(first)
        second = _stream(node, tenant, stack)
        _next_text(second)
        waiting = _stream(node, tenant, stack)  # both slots are taken: it waits
        leaving.close()  # the first client goes away mid-stream
        assert _next_text(waiting)  # and the waiting one gets its slot
    # the first session's generation stopped when its client left, far short of 1500
    teardown: list[httpx.Response] = []
    assert wait_until(
        lambda: (
            teardown.append(httpx.delete(f"{node.api}/v1/sessions/{sid}", headers=auth))
            or teardown[-1].status_code != 409
        )
    )
    usage = teardown[-1].json()
    assert usage["requests"] == 1
    assert 0 < usage["completion_tokens"] < 500


def test_greedy_answers_do_not_change_with_eight_clients_at_once(
    node: Node, tenants: Tenants
) -> None:
    client = node.openai(tenants.alice)

    def ask(prompt: str) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            max_tokens=40,
            temperature=0,
            messages=[{"role": "user", "content": prompt}],
        )
        return str(reply.choices[0].message.content)

    alone = [ask(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask, PROMPTS))
    assert together == alone
    assert "Paris" in alone[0]


def test_shutdown_with_streams_in_flight_ends_cleanly(
    tmp_path: Path, model_spec: ModelSpec
) -> None:
    node = new_node(
        tmp_path,
        SANCTUM_DP_ENGINE__MAX_SEQUENCES="2",
        SANCTUM_DP_ENGINE__CONTEXT_SIZE="4096",
    )
    tenant = make_tenant("t", (MODEL,))
    node.start()
    try:
        node.push([model_spec], [tenant])
        ended: list[str] = []
        streaming: list[int] = []

        def client(index: int) -> None:
            with ExitStack() as stack:
                lines = _stream(node, tenant, stack, max_tokens=2000)
                if index < 2:
                    _next_text(lines)  # two decode; the third waits for a slot
                streaming.append(index)
                last = ""
                try:
                    for line in lines:
                        if line.startswith("data: "):
                            last = line
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                ended.append(last)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        # The first two take both slots before the third asks, so the third queues.
        for t in threads[:2]:
            t.start()
        assert wait_until(lambda: len(streaming) == 2, timeout=120)
        threads[2].start()
        assert wait_until(lambda: len(streaming) == 3, timeout=120)
        assert node.stop(signal.SIGTERM) == 0
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        # Every turn was accounted and its one-shot session's record stored before exit.
        node.start()
        records = [node.open_record(r["jws"]) for r in node.usage()]
    finally:
        node.stop()
    assert len(records) == 3
    assert all(r.request_count == 1 for r in records)
    assert sum(r.completion_tokens > 0 for r in records) >= 2  # the two that decoded
    log = "".join(node.output)
    # Every stream ended with an event the client can read: the end of its answer, or
    # an error in OpenAI's shape saying the generation was ended.
    assert len(ended) == 3
    for last in ended:
        assert last == "data: [DONE]" or json.loads(last[6:])["error"]["code"] == (
            "generation_ended"
        )
    assert "Traceback" not in log and " ERROR " not in log
    assert "node stopped" in log
