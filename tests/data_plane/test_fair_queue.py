"""The fair executor: work taken client by client, bounded queues, callers that leave."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from data_plane.fair_queue import FairExecutor, QueueFull


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(main())


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(5000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never happened")


def test_a_client_with_a_long_queue_does_not_hold_up_the_others() -> None:
    """A queues ten items, then B and C one each: theirs run after one more of A's (its
    turn was already in line), not after all nine."""
    executor = FairExecutor("test", workers=1, max_per_client=32)
    gate = threading.Event()
    order: list[str] = []

    def work(name: str) -> str:
        gate.wait()
        order.append(name)
        return name

    async def main() -> list[str]:
        tasks = [asyncio.create_task(executor.run("a", work, f"a{i}")) for i in range(10)]
        await _until(lambda: executor.busy == 1)  # a0 holds the worker
        tasks.append(asyncio.create_task(executor.run("b", work, "b0")))
        tasks.append(asyncio.create_task(executor.run("c", work, "c0")))
        await _until(lambda: sum(executor.waiting().values()) == 11)
        gate.set()
        return list(await asyncio.gather(*tasks))

    results = run(main)
    executor.close()
    assert order[:5] == ["a0", "a1", "b0", "c0", "a2"]
    assert sorted(results) == sorted(order)


def test_queues_are_bounded_per_client_and_in_all() -> None:
    """Per client and in all; a client with nothing queued still gets one place, so a
    few clients that fill the queue can't shut out the rest."""
    executor = FairExecutor("prompt builder", workers=1, max_per_client=2, max_total=3)
    gate = threading.Event()

    async def main() -> tuple[QueueFull, QueueFull, list[Any]]:
        running = asyncio.create_task(executor.run("a", gate.wait))
        await _until(lambda: executor.busy == 1)
        queued = [asyncio.create_task(executor.run("a", gate.wait)) for _ in range(2)]
        await _until(lambda: executor.waiting() == {"a": 2})
        with pytest.raises(QueueFull) as mine:
            await executor.run("a", gate.wait)
        queued.append(asyncio.create_task(executor.run("b", gate.wait)))
        await _until(lambda: executor.waiting().get("b") == 1)
        with pytest.raises(QueueFull) as everyone:  # full, and b has one queued already
            await executor.run("b", gate.wait)
        queued.append(asyncio.create_task(executor.run("c", gate.wait)))  # c has none
        await _until(lambda: executor.waiting().get("c") == 1)
        gate.set()
        return mine.value, everyone.value, list(await asyncio.gather(running, *queued))

    mine, everyone, results = run(main)
    executor.close()
    assert mine.client_limit and "this client has 2 requests waiting" in str(mine)
    assert not everyone.client_limit
    assert "3 requests are waiting for the prompt builder" in str(everyone)
    assert results == [True] * 5


def test_work_whose_caller_left_is_skipped_and_errors_reach_the_caller() -> None:
    executor = FairExecutor("test", workers=1)
    gate = threading.Event()
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("boom")

    async def main() -> None:
        first = asyncio.create_task(executor.run("a", gate.wait))
        await _until(lambda: executor.busy == 1)
        left = asyncio.create_task(executor.run("b", ran.append, "left"))
        await _until(lambda: executor.waiting() == {"b": 1})
        left.cancel()
        await _until(left.done)
        gate.set()
        await first
        with pytest.raises(ValueError, match="boom"):
            await executor.run("c", fail)
        assert await executor.run("d", lambda: "after") == "after"

    run(main)
    executor.close()
    assert ran == []
