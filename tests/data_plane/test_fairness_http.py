"""Fair turns as clients see them over HTTP: client A keeps 32 streams going on a node
with eight slots, and client B's requests are admitted and answered while all of A's
are still in flight. (The engine's side, paused generations and their exact output, is
in test_engine_fairness.py; B's time to first token against B's alone is measured in
``make bench``: tests/bench/fairness.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from shared.config import ClientLimits, ModelSpec
from shared.models import DEFAULT_MODEL_NAME
from tests.conftest import Node, Tenant, make_tenant, new_node

pytestmark = pytest.mark.model

MODEL = DEFAULT_MODEL_NAME
A_STREAMS = 32


@pytest.fixture(scope="module")
def shared_node(
    tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec
) -> Iterator[tuple[Node, Tenant, Tenant]]:
    node = new_node(tmp_path_factory.mktemp("fair"), SANCTUM_DP_ENGINE__CONTEXT_SIZE="1024")
    a = make_tenant("a", (MODEL,), limits=ClientLimits(max_sessions=64, max_queued=24))
    b = make_tenant("b", (MODEL,))
    node.start()
    node.push([model_spec], [a, b])
    yield node, a, b
    node.stop()


def test_b_is_answered_while_a_keeps_32_streams_going(
    shared_node: tuple[Node, Tenant, Tenant],
) -> None:
    node, a, b = shared_node

    async def main() -> tuple[list[int], list[int], int]:
        started = asyncio.Event()
        first_texts = 0
        a_done: list[int] = []

        async def a_stream(c: httpx.AsyncClient) -> None:
            nonlocal first_texts
            body = {
                "model": MODEL,
                "prompt": "1, 2, 3, 4, 5, 6,",
                "max_tokens": 400,
                "temperature": 0,
                "stream": True,
            }
            async with c.stream("POST", "/completions", json=body) as r:
                assert r.status_code == 200, await r.aread()
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                        first_texts += 1
                        if first_texts == 8:
                            started.set()
                a_done.append(r.status_code)

        headers = {"Authorization": f"Bearer {a.key}"}
        async with (
            httpx.AsyncClient(base_url=f"{node.api}/v1", headers=headers, timeout=600) as ca,
            httpx.AsyncClient(
                base_url=f"{node.api}/v1",
                headers={"Authorization": f"Bearer {b.key}"},
                timeout=600,
            ) as cb,
        ):
            streams = [asyncio.create_task(a_stream(ca)) for _ in range(A_STREAMS)]
            await asyncio.wait_for(started.wait(), 300)
            for _ in range(600):  # every slot is A's, and the other 24 of A's wait
                health = (await asyncio.to_thread(node.health))["engines"][0]
                if (health["running"], health["waiting"]) == (8, A_STREAMS - 8):
                    break
                await asyncio.sleep(0.1)
            assert (health["running"], health["waiting"]) == (8, A_STREAMS - 8)
            b_statuses = []
            for _ in range(5):
                r = await cb.post(
                    "/chat/completions",
                    json={
                        "model": MODEL,
                        "max_tokens": 8,
                        "temperature": 0,
                        "messages": [{"role": "user", "content": "Name a colour."}],
                    },
                )
                b_statuses.append(r.status_code)
            a_finished_meanwhile = len(a_done)
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            paused = (await asyncio.to_thread(node.health))["engines"][0]
        return b_statuses, [a_finished_meanwhile], paused["paused"]

    b_statuses, (a_finished,), paused = asyncio.run(main())
    assert b_statuses == [200] * 5  # admitted every time, never 429
    assert a_finished == 0  # answered while all of A's 32 were still in flight...
    assert paused >= 5  # ...each time by pausing one of A's for B's turn
