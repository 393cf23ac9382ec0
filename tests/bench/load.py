"""A bounded load test: 64 concurrent clients with mixed work for two minutes against one
real node (loopback only), with the node's resident memory sampled throughout.

Eight client organisations (API keys), eight connections each. A connection does one
kind of work over and over, with a short pause between: a plain chat, a streamed chat,
a three-turn session torn down at the end, or an embeddings call of eight inputs. A
refusal (429) is honoured as the SDK would: wait ``Retry-After``, then go on. Reported:
answers by status (a 5xx is a bug), time to first token (streams: first content; the
others: the whole answer) per kind at p50 and p95, and the resident memory of the node.

``python -m tests.bench load``; about two and a half minutes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from typing import Any

import httpx

from shared.config import ClientLimits
from tests.bench import write_section
from tests.bench._node import MODEL, first_token, median, quantile, rss_mib, running_node
from tests.conftest import Node, make_tenant

DURATION = 130.0  # seconds of load
TENANTS = 8
PER_TENANT = 8
KINDS = ("chat", "stream", "session", "embeddings")
QUESTIONS = [
    "What is the capital city of France?",
    "Name three fruits that are red.",
    "Why is the sky blue?",
    "Describe the ocean in one sentence.",
]


class Tally:
    def __init__(self) -> None:
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.tokens = 0  # the model's prompt and completion tokens, from the answers

    def add(self, kind: str, status: int, seconds: float | None = None, tokens: int = 0) -> None:
        self.statuses[kind][status] += 1
        self.tokens += tokens
        if status == 200 and seconds is not None:
            self.latency[kind].append(seconds)


def _tokens(r: httpx.Response) -> int:
    return int(r.json()["usage"]["total_tokens"]) if r.status_code == 200 else 0


async def _refused(response_status: int, headers: httpx.Headers | None) -> None:
    if response_status == 429:
        wait = float(headers.get("retry-after", "1") if headers is not None else "1")
        await asyncio.sleep(min(wait, 10))


async def _client(
    node: Node, key: str, kind: str, seed: int, deadline: float, tally: Tally
) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"{node.api}/v1", headers=headers, timeout=300) as c:
        while time.monotonic() < deadline:
            question = rng.choice(QUESTIONS)
            chat = {
                "model": MODEL,
                "temperature": 0.7,
                "seed": rng.randrange(1 << 30),
                "messages": [{"role": "user", "content": question}],
            }
            if kind == "stream":
                status, ttft, _, tokens = await first_token(c, {**chat, "max_tokens": 48})
                tally.add(kind, status, ttft, tokens)
                await _refused(status, None)
            elif kind == "chat":
                sent = time.perf_counter()
                r = await c.post("/chat/completions", json={**chat, "max_tokens": 16})
                tally.add(kind, r.status_code, time.perf_counter() - sent, _tokens(r))
                await _refused(r.status_code, r.headers)
            elif kind == "session":
                await _session(c, chat, tally)
            else:
                texts = [f"{question} ({i})" for i in range(8)]
                sent = time.perf_counter()
                r = await c.post("/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts})
                tally.add(kind, r.status_code, time.perf_counter() - sent)
                await _refused(r.status_code, r.headers)
            await asyncio.sleep(rng.uniform(0.2, 1.0))


async def _session(c: httpx.AsyncClient, chat: dict[str, Any], tally: Tally) -> None:
    opened = await c.post("/sessions", json={"model": MODEL})
    if opened.status_code != 201:
        tally.add("session", opened.status_code)
        await _refused(opened.status_code, opened.headers)
        return
    sid = opened.json()["id"]
    try:
        for _ in range(3):
            sent = time.perf_counter()
            r = await c.post(
                "/chat/completions",
                json={**chat, "max_tokens": 12},
                headers={"X-Sanctum-Session": sid},
            )
            tally.add("session", r.status_code, time.perf_counter() - sent, _tokens(r))
            if r.status_code != 200:
                await _refused(r.status_code, r.headers)
                break
    finally:
        await c.delete(f"/sessions/{sid}")


async def _watch(
    node: Node, pid: int, stop: asyncio.Event, memory: list[float], parked: list[int]
) -> None:
    async with httpx.AsyncClient(timeout=30) as c:
        while not stop.is_set():
            memory.append(rss_mib(pid))
            health = (await c.get(f"{node.management}/internal/health")).json()
            parked.append(sum(e["parked_bytes"] for e in health["engines"]))
            await asyncio.sleep(2)


async def _run(node: Node, keys: list[str]) -> tuple[Tally, list[float], list[int], float]:
    assert node.proc is not None
    pid = node.proc.pid
    memory: list[float] = [rss_mib(pid)]
    parked: list[int] = []
    tally = Tally()
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(node, pid, stop, memory, parked))
    started = time.monotonic()
    deadline = started + DURATION
    clients = [
        _client(node, keys[t], KINDS[(t + i) % len(KINDS)], t * 100 + i, deadline, tally)
        for t in range(TENANTS)
        for i in range(PER_TENANT)
    ]
    await asyncio.gather(*clients)
    wall = time.monotonic() - started
    stop.set()
    await watcher
    memory.append(rss_mib(pid))
    return tally, memory, parked, wall


def main() -> None:
    tenants = [
        make_tenant(f"org{t}", (MODEL,), embeddings=True, limits=ClientLimits(max_sessions=16))
        for t in range(TENANTS)
    ]
    with running_node(tenants) as node:
        tally, memory, parked, wall = asyncio.run(_run(node, [t.key for t in tenants]))
    rows = []
    errors = 0
    for kind in KINDS:
        statuses = tally.statuses[kind]
        errors += sum(n for s, n in statuses.items() if s >= 500)
        lat = tally.latency[kind]
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        rows.append(
            f"| {kind} | {sum(statuses.values())} | {shown} | "
            f"{median(lat):.3f} s | {quantile(lat, 0.95):.3f} s |"
        )
    body = f"""
## Load: 64 concurrent clients, mixed work, {wall:.0f} seconds

{TENANTS} client organisations with {PER_TENANT} connections each (64 at once) against one
node (8 slots), loopback only: plain chats (16 tokens), streamed chats (48 tokens),
three-turn sessions (12 tokens a turn) and embeddings calls (8 inputs), each connection
pausing 0.2-1 s between requests and honouring `Retry-After` on a 429.
`tests/bench/load.py`.

| work | requests | answers by status | time to first token p50 | p95 |
|---|---:|---|---:|---:|
{chr(10).join(rows)}

(Streams: to the first content; the others: the whole answer, per turn for sessions.)
The model processed {tally.tokens / wall:.0f} tokens/s (prompt and completion, from the
answers' usage): this machine's whole capacity (about 300 prompt or 225 decoded tokens
a second), so the offered load exceeds it and the times above are mostly queueing,
shared out client by client.
Server errors (5xx): **{errors}**. The node's resident memory: {memory[0]:.0f} MiB before,
at most {max(memory):.0f} MiB during, {memory[-1]:.0f} MiB after; parked KV state at most
{max(parked, default=0) / 1_048_576:.1f} MiB (cap: 1024 MiB).
"""
    print(body)
    write_section("load", body)
