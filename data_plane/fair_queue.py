"""Heavy work of many clients on a few threads, taken client by client.

Prompt building (templates and tokenizing), embedding and document parsing are CPU work
that must not run on the event loop, which serves every stream and both listeners. A
plain thread pool would take that work first come first served, so a client that sends
many large requests would hold every worker and make everyone else wait behind it.

:class:`FairExecutor` keeps one FIFO per client and hands items to its worker threads
round robin across clients: a client's next item waits for at most one item of each
other client that has work queued, however much those clients sent. Queues are bounded
per client and in all; past a bound :meth:`FairExecutor.run` raises :class:`QueueFull`
at once (the API answers 429) rather than letting work pile up in RAM. A client with
nothing queued always gets a place, so a few clients that fill the queue can't shut
out the rest (the queue then holds at most one item more per client). An item whose
caller went away before a worker took it is skipped.

Items carry client content in RAM only, and nothing here logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# The queue key of work that is no client's (loading, an operator's ingestion): "@" is
# not allowed in a client id, so it never shares a client's queue.
NODE_WORK = "@node"


class QueueFull(Exception):
    """The work can't be queued: the client's own queue, or the whole queue, is full.

    The message names the queue and its limit, never the work.
    """

    def __init__(self, message: str, *, client_limit: bool) -> None:
        super().__init__(message)
        self.client_limit = client_limit


@dataclass(eq=False)
class _Item:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    abandoned: bool = field(default=False)


class FairExecutor:
    """``workers`` threads that run callables queued per client, round robin."""

    def __init__(
        self,
        name: str,
        *,
        workers: int = 1,
        max_per_client: int = 16,
        max_total: int = 256,
    ) -> None:
        self.name = name
        self.max_per_client = max_per_client
        self.max_total = max_total
        self._queues: dict[str, deque[_Item]] = {}
        self._turns: deque[str] = deque()  # clients with queued items, next turn first
        self._total = 0
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, client: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a worker in ``client``'s turn and return its result."""
        loop = asyncio.get_running_loop()
        item = _Item(fn, args, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is shut down")
            queue = self._queues.get(client)
            held = len(queue) if queue is not None else 0
            if held >= self.max_per_client:
                raise QueueFull(
                    f"this client has {held} requests waiting for the {self.name}, its limit",
                    client_limit=True,
                )
            if held and self._total >= self.max_total:
                raise QueueFull(
                    f"{self._total} requests are waiting for the {self.name}, its limit",
                    client_limit=False,
                )
            if queue is None:
                queue = self._queues[client] = deque()
                self._turns.append(client)
            queue.append(item)
            self._total += 1
            self._cond.notify()
        try:
            return await item.future
        except asyncio.CancelledError:
            item.abandoned = True  # not started yet: a worker skips it
            raise

    def waiting(self) -> dict[str, int]:
        """Queued items by client (for health)."""
        with self._cond:
            return {client: len(queue) for client, queue in self._queues.items()}

    @property
    def busy(self) -> int:
        return self._busy

    def close(self) -> None:
        """Run what is queued, then stop the workers (waits for them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _next(self) -> _Item | None:
        with self._cond:
            while not self._turns and not self._closed:
                self._cond.wait()
            if not self._turns:
                return None
            client = self._turns.popleft()
            queue = self._queues[client]
            item = queue.popleft()
            self._total -= 1
            if queue:
                self._turns.append(client)  # its next item waits for everyone else's turn
            else:
                del self._queues[client]
            self._busy += 1
            return item

    def _work(self) -> None:
        while (item := self._next()) is not None:
            try:
                if item.abandoned:
                    continue
                try:
                    value = item.fn(*item.args)
                except BaseException as exc:  # handed to the awaiting coroutine
                    self._settle(item, None, exc)
                else:
                    self._settle(item, value, None)
            finally:
                with self._cond:
                    self._busy -= 1

    @staticmethod
    def _settle(item: _Item, value: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if item.future.done():
                return
            if exc is not None:
                item.future.set_exception(exc)
            else:
                item.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
            item.loop.call_soon_threadsafe(settle)
