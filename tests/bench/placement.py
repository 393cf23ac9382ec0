"""Placement: what routing a peer to its pool costs on the way to the first token, and
what a shared pool of two nodes gives on this machine, against one node (issue 15).

Everything on loopback, like ``tests/data_plane/gateway/test_nginx.py``: the client
speaks from ``127.0.0.2``, an enabled peer's "tunnel address" whose client is placed on
pool ``shared``; no WireGuard (the secure_path benchmark measures the tunnel and the
backbone, which every path here would pay alike).

- Nodes: real ``python -m data_plane serve`` processes with the bundled model, each
  named in its own bundle and placed on pool ``shared``. ``node-1`` and ``node-2`` run
  one engine thread each (two of them fit the machine's two cores); ``node-3`` runs the
  node's default, a thread per core: one node that has the machine to itself.
- Gateways: real nginx, rendered by the agent's renderer from
  ``infra/nginx/gateway.conf.template`` and a :class:`GatewayConfig` whose peer is on
  pool ``shared``: **pool of two** (upstreams node-1 and node-2), **pool of one**
  (node-1), and **pool of one, all cores** (node-3, for the throughput part only). One
  nginx per config, each on its own port.

Time to first token (streamed chats, greedy, 8 tokens, a fresh prompt each time): each
round asks every path once per kind of request and connection, the order of the paths
rotating round by round. The paths are node-1 and node-2 straight, and the two pools
through nginx. A routed request is paired with the same round's direct request to the
node that answered it (the session id in the answer names it), so the difference is
routing and nothing the two nodes do differently. Kinds of request:

- **one-shot call** (no session header): nginx picks a node of the pool;
- **continued session**: a session opened just before (``POST /v1/sessions``, not
  timed), then a chat with its ``X-Sanctum-Session`` header: nginx's route map sends
  it to the node whose tag the id carries.

After each chat the same path is timed once more without model work: ``GET /v1/models``
for a one-shot, ``GET /v1/sessions/ID`` with the session header for a session (routed by
the route map like the chat).

Throughput: 8 clients at once, each streaming chats of 64 tokens (greedy, a fresh
prompt each), through each pool in turn, the order rotating round by round; aggregate
completion tokens over the round's wall time.

The machine may be shared: each round also measures what other processes took of it
(:class:`tests.bench.OtherLoad`). Rounds run until enough were quiet (at most ``QUIET``)
or the part's time is up; then the least disturbed make up the number, and the report
says how many ran, how many were kept and what each was disturbed by.

``python -m tests.bench placement``; about seven minutes on a quiet machine, about ten
at most when other work disturbs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from data_plane.gateway.nginx import RenderPaths, render
from shared.config import PoolSpec
from shared.gateway import GatewayConfig, Upstream, WireGuardInterface, make_peer
from shared.routing import SESSION_ID, route_tag
from shared.wireguard import generate_key_pair, generate_preshared_key
from tests.bench import OtherLoad, write_section
from tests.bench._node import (
    MODEL,
    Streamed,
    median,
    median_interval,
    placed_node,
    quantile,
    stream_chat,
)
from tests.conftest import REPO, Node, Tenant, free_port, make_tenant, release_fields

ROUNDS = 30
WARMUP = 2
TTFT_BUDGET = 300.0  # seconds: no round starts later, even if some were disturbed
TTFT_TOKENS = 8
LOAD_CLIENTS = 8
LOAD_CHATS = 2  # each client's chats in a round, one after another
LOAD_TOKENS = 64
LOAD_ROUNDS = 4  # per pool
LOAD_BUDGET = 200.0
POOL_LIMIT = 30.0  # seconds for one pool's part of a round (about 14 on a quiet machine)
QUIET = 0.03  # the machine's share other processes may take in a round that counts

POOL = "shared"
GATEWAY = "gw-bench"
HOST = "127.0.0.1"  # nginx and the nodes
PEER = "127.0.0.2"  # the client's source: an enabled peer's tunnel address
NODE_1, NODE_2, NODE_WIDE = "node-1", "node-2", "node-3"
WIDE_THREADS = 2  # the node's default on this machine: a thread per core

DIRECT_1, DIRECT_2 = "node-1 direct", "node-2 direct"
POOL_ONE, POOL_TWO, POOL_WIDE = "pool of one", "pool of two", "pool of one, all cores"
TTFT_PATHS = (DIRECT_1, DIRECT_2, POOL_ONE, POOL_TWO)
LOAD_PATHS = (POOL_TWO, POOL_ONE, POOL_WIDE)
DIRECT = {NODE_1: DIRECT_1, NODE_2: DIRECT_2}
ONE_SHOT, SESSION = "one-shot call", "continued session"
NEW, KEPT = "new connection", "kept alive"
THINGS = ("lemon", "cloud", "tomato", "leaf", "crow", "snow", "plum", "brick", "sea", "coal")
TOPICS = ("a lighthouse", "a river", "a market", "a glacier", "a violin", "a harbour")


def _gateway_config(upstreams: list[Upstream], port: int) -> GatewayConfig:
    """One enabled peer (``PEER``) whose client is placed on ``POOL``; plain HTTP."""
    _, gw_public = generate_key_pair()
    return GatewayConfig.create(
        version=1,
        **release_fields(),
        gateway=GATEWAY,
        interface=WireGuardInterface(public_key=gw_public, addresses=(f"{HOST}/8",)),
        http_port=port,
        plain_http=True,
        peers=[
            make_peer(
                id="peer-1",
                client="acme",
                public_key=generate_key_pair()[1],
                addresses=(PEER,),
                enabled=True,
                preshared_key=generate_preshared_key(),
                gateway=GATEWAY,
                gateway_public_key=gw_public,
                pool=POOL,
            )
        ],
        upstreams=upstreams,
    )


@contextlib.contextmanager
def _nginx(root: Path, nodes: list[Node]) -> Iterator[str]:
    """nginx for a pool of ``nodes``, rendered by the agent's renderer, its pid file in
    ``root``; its base URL."""
    port = free_port()
    upstreams = [
        Upstream(node=n.env["SANCTUM_DP_NODE_ID"], host=HOST, port=_port(n.api), pool=POOL)
        for n in nodes
    ]
    paths = RenderPaths(
        pid_file=root / "nginx.pid",
        log_dir=root / "log",
        temp_dir=root / "temp",
        user=None,
        max_body="2m",
        listen_host=HOST,
        http_port=port,
    )
    for directory in (root, paths.log_dir, paths.temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    template = (REPO / "infra/nginx/gateway.conf.template").read_text("utf-8")
    conf = root / "nginx.conf"
    conf.write_text(render(template, _gateway_config(upstreams, port), paths))
    subprocess.run(["nginx", "-t", "-q", "-c", str(conf)], check=True)
    subprocess.run(["nginx", "-c", str(conf)], check=True)
    try:
        yield f"http://{HOST}:{port}/v1"
    finally:
        subprocess.run(["nginx", "-c", str(conf), "-s", "quit"], check=False)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _node_of(session: str | None, tags: dict[str, str]) -> str:
    """The node that holds ``session``, from the route tag in its id."""
    match = SESSION_ID.match(session or "")
    assert match, f"not a session id: {session!r}"
    return tags[match["route"]]


def _body(prompt: str, tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }


def _short(n: int) -> str:
    """A fresh prompt of the same length each time: no path gets a cache hit."""
    return f"Note {n:04d}: in one word, what colour is a {THINGS[n % len(THINGS)]}?"


def _long(n: int) -> str:
    return f"Story {n:05d}: tell me a long story about {TOPICS[n % len(TOPICS)]}."


@dataclass
class Sample:
    ttft: float  # seconds to the first content token
    headers: float  # seconds to the answer's headers (the request's way, not the model's)
    round_trip: float  # seconds for the same path's request without model work
    node: str  # the node that answered


Key = tuple[str, str, str]  # (kind of request, path, connection)


T = TypeVar("T")


@dataclass
class Rounds(Generic[T]):
    """The rounds a part keeps: the quiet ones first, then (if too few were quiet in the
    time it had) the least disturbed of the rest."""

    wanted: int
    kept: list[T] = field(default_factory=list)
    disturbed: int = 0  # of ``kept``, those in which other processes took over ``QUIET``
    others: list[float | None] = field(default_factory=list)  # each run's; None: cut
    _disturbed: list[tuple[float, T]] = field(default_factory=list)

    def add(self, result: T | None, others: float) -> None:
        self.others.append(others if result is not None else None)
        if result is None:
            return
        if others <= QUIET:
            self.kept.append(result)
        else:
            self._disturbed.append((others, result))

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.wanted

    def close(self) -> None:
        """Make up the number with the least disturbed rounds, if need be."""
        self._disturbed.sort(key=lambda pair: pair[0])
        missing = max(0, self.wanted - len(self.kept))
        self.disturbed = min(missing, len(self._disturbed))
        self.kept = self.kept[: self.wanted] + [r for _, r in self._disturbed[:missing]]

    def note(self) -> str:
        ran = len(self.others)
        quiet = len(self.kept) - self.disturbed
        text = f"{ran} rounds ran; {len(self.kept)} kept, {quiet} of them quiet"
        if self.disturbed:
            text += f" and {self.disturbed} disturbed (the least, of those that ran)"
        shares = ", ".join("cut" if x is None else f"{x:.0%}" for x in self.others)
        return f"{text}; other processes' share of the machine, round by round: {shares}"


@dataclass
class Timings:
    rounds: Rounds[dict[Key, Sample]]
    prompt_tokens: int = 0


class Paths:
    """A kept-alive client per path, and fresh ones on demand; all from ``PEER``."""

    def __init__(self, urls: dict[str, str], key: str) -> None:
        self.urls = urls
        self.key = key
        self.kept = {path: self.fresh(path) for path in urls}

    def fresh(self, path: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.urls[path],
            transport=httpx.AsyncHTTPTransport(local_address=PEER),
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=300,
        )

    async def aclose(self) -> None:
        for client in self.kept.values():
            await client.aclose()


async def _timed_get(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    sent = time.perf_counter()
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, f"{client.base_url}{url}: {response.status_code}"
    return time.perf_counter() - sent


async def _once(
    paths: Paths, kind: str, path: str, mode: str, n: int, tags: dict[str, str]
) -> Sample:
    """One chat on ``path`` (and the same path without model work), timed."""
    kept = paths.kept[path]
    headers: dict[str, str] = {}
    if kind == SESSION:
        opened = await kept.post("/sessions", json={"model": MODEL})
        assert opened.status_code == 201, f"{path}: open: {opened.status_code} {opened.text}"
        headers = {"X-Sanctum-Session": opened.json()["id"]}
    client = kept if mode == KEPT else paths.fresh(path)
    try:
        chat = await stream_chat(client, _body(_short(n), TTFT_TOKENS), headers)
        assert chat.status == 200, f"{path} {kind}: status {chat.status}"
        node = _node_of(chat.session, tags)
        if kind == SESSION:
            assert chat.session == headers["X-Sanctum-Session"], "answered in another session"
            url = f"/sessions/{chat.session}"
        else:
            url = "/models"
        if mode == NEW:
            await client.aclose()
            client = paths.fresh(path)
        round_trip = await _timed_get(client, url, headers)
    finally:
        if client is not kept:
            await client.aclose()
    if kind == SESSION:
        # No header: nginx finds the session's node by the id in the path.
        closed = await kept.delete(f"/sessions/{chat.session}")
        assert closed.status_code == 200, f"{path}: teardown: {closed.status_code}"
    return Sample(chat.first, chat.headers, round_trip, node)


async def _ttft(urls: dict[str, str], key: str, tags: dict[str, str], roots: set[int]) -> Timings:
    """Rounds of every (kind, path, connection) until ``ROUNDS`` were quiet or the part's
    time is up."""
    paths = Paths(urls, key)
    timings = Timings(Rounds(ROUNDS))
    counter = iter(range(1, 1_000_000))
    deadline = time.monotonic() + TTFT_BUDGET
    try:
        probe = await stream_chat(paths.kept[DIRECT_1], _body(_short(0), TTFT_TOKENS))
        timings.prompt_tokens = probe.prompt_tokens
        n = 0
        while not timings.rounds.done and time.monotonic() < deadline:
            rotated = TTFT_PATHS[n % 4 :] + TTFT_PATHS[: n % 4]
            samples: dict[Key, Sample] = {}
            others = OtherLoad(roots)
            for mode in (NEW, KEPT):
                for kind in (ONE_SHOT, SESSION):
                    for path in rotated:
                        sample = await _once(paths, kind, path, mode, next(counter), tags)
                        samples[(kind, path, mode)] = sample
            if n >= WARMUP:
                timings.rounds.add(samples, others.share())
            n += 1
        timings.rounds.close()
    finally:
        await paths.aclose()
    return timings


@dataclass
class LoadRound:
    seconds: float
    completion_tokens: int
    by_node: Counter[str]
    ttft: list[float]
    others: float  # the machine's share other processes took meanwhile

    @property
    def rate(self) -> float:
        return self.completion_tokens / self.seconds


async def _load_round(
    paths: Paths, path: str, start: int, tags: dict[str, str], roots: set[int]
) -> LoadRound:
    clients = [paths.fresh(path) for _ in range(LOAD_CLIENTS)]

    async def client_chats(c: httpx.AsyncClient, first: int) -> list[Streamed]:
        out = []
        for i in range(LOAD_CHATS):
            out.append(await stream_chat(c, _body(_long(first + i), LOAD_TOKENS)))
        return out

    try:
        # One request each first: the connections are up before the clock starts.
        await asyncio.gather(*(c.get("/models") for c in clients))
        others = OtherLoad(roots)
        began = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(client_chats(c, start + i * LOAD_CHATS) for i, c in enumerate(clients))
            ),
            POOL_LIMIT,
        )
        seconds = time.perf_counter() - began
        disturbed = others.share()
    finally:
        for c in clients:
            await c.aclose()
    chats = [s for per_client in results for s in per_client]
    assert all(s.status == 200 for s in chats), Counter(s.status for s in chats)
    return LoadRound(
        seconds,
        sum(s.completion_tokens for s in chats),
        Counter(_node_of(s.session, tags) for s in chats),
        [s.first for s in chats],
        disturbed,
    )


async def _load(
    urls: dict[str, str], key: str, tags: dict[str, str], roots: set[int]
) -> Rounds[dict[str, LoadRound]]:
    """Rounds of every pool until ``LOAD_ROUNDS`` were quiet or the part's time is up. A
    round in which a pool took longer than ``POOL_LIMIT`` is cut and counts for nothing
    (other work took the machine: with a thread per core, a node slows down manyfold)."""
    paths = Paths(urls, key)
    rounds: Rounds[dict[str, LoadRound]] = Rounds(LOAD_ROUNDS)
    start = 0
    deadline = time.monotonic() + LOAD_BUDGET
    n = 0
    try:
        while not rounds.done and time.monotonic() < deadline:  # the first is warm-up
            results: dict[str, LoadRound] | None = {}
            for path in LOAD_PATHS[n % 3 :] + LOAD_PATHS[: n % 3]:
                try:
                    result = await _load_round(paths, path, start, tags, roots)
                except TimeoutError:
                    results = None
                    break
                finally:
                    start += LOAD_CLIENTS * LOAD_CHATS
                assert results is not None
                results[path] = result
            if n:
                share = max(r.others for r in results.values()) if results else 1.0
                rounds.add(results, share)
            n += 1
        rounds.close()
    finally:
        await paths.aclose()
    return rounds


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _added(timings: Timings, what: str) -> dict[Key, list[float]]:
    """Each routed request's time less the same round's direct request to the node that
    answered it, by (kind, path, connection); ``what`` is ``ttft`` or ``round_trip``."""
    return {
        (kind, path, mode): [
            getattr(r[(kind, path, mode)], what)
            - getattr(r[(kind, DIRECT[r[(kind, path, mode)].node], mode)], what)
            for r in timings.rounds.kept
        ]
        for kind in (ONE_SHOT, SESSION)
        for path in (POOL_ONE, POOL_TWO)
        for mode in (NEW, KEPT)
    }


def _interval(diffs: list[float]) -> str:
    low, high = median_interval(diffs)
    return f"{median(diffs) * 1000:+.1f} ({low * 1000:+.1f} to {high * 1000:+.1f})"


def _paths_table(timings: Timings) -> str:
    """Time to first token by path: medians, p90s, and which node answered."""
    lines = [
        "| request | path | connection | median | p90 | answered by |",
        "|---|---|---|---:|---:|---|",
    ]
    for kind in (ONE_SHOT, SESSION):
        for mode in (NEW, KEPT):
            for path in TTFT_PATHS:
                samples = [r[(kind, path, mode)] for r in timings.rounds.kept]
                xs = [s.ttft for s in samples]
                nodes = Counter(s.node for s in samples)
                answered = ", ".join(f"{node} {count}" for node, count in sorted(nodes.items()))
                lines.append(
                    f"| {kind} | {path} | {mode} | {_ms(median(xs))} | "
                    f"{_ms(quantile(xs, 0.9))} | {answered} |"
                )
    return "\n".join(lines)


MEASURES = ("ttft", "headers", "round_trip")


def _added_table(timings: Timings) -> str:
    """What routing adds, row by row and over every routed request: paired medians with
    their 95% intervals, to the first token, to the headers and without model work."""
    added = {what: _added(timings, what) for what in MEASURES}
    lines = [
        "| request | path | connection | to the first token | to the answer's headers | "
        "round trip, no model work |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key in added["ttft"]:
        cells = " | ".join(_interval(added[what][key]) for what in MEASURES)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {cells} |")
    every = " | ".join(
        _interval([d for diffs in added[what].values() for d in diffs]) for what in MEASURES
    )
    lines.append(f"| **every routed request** | | | {every} |")
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    tenant: Tenant = make_tenant("acme", (MODEL,))
    pool = PoolSpec(name=POOL)
    one = {"SANCTUM_DP_ENGINE__THREADS": "1"}
    tags = {route_tag(n): n for n in (NODE_1, NODE_2, NODE_WIDE)}
    with (
        tempfile.TemporaryDirectory(prefix="sanctum-bench-placement-") as tmp_name,
        placed_node([tenant], NODE_1, pool, **one) as node_1,
        placed_node([tenant], NODE_2, pool, **one) as node_2,
        placed_node(
            [tenant], NODE_WIDE, pool, SANCTUM_DP_ENGINE__THREADS=str(WIDE_THREADS)
        ) as node_wide,
    ):
        tmp = Path(tmp_name)
        with (
            _nginx(tmp / "two", [node_1, node_2]) as two,
            _nginx(tmp / "one", [node_1]) as one_url,
            _nginx(tmp / "wide", [node_wide]) as wide,
        ):
            # nginx leaves this process's tree: its masters count as ours too.
            roots = {int((tmp / d / "nginx.pid").read_text()) for d in ("two", "one", "wide")}
            urls = {
                DIRECT_1: f"{node_1.api}/v1",
                DIRECT_2: f"{node_2.api}/v1",
                POOL_ONE: one_url,
                POOL_TWO: two,
            }
            set_up = time.monotonic() - started
            timings = asyncio.run(_ttft(urls, tenant.key, tags, roots))
            ttft_done = time.monotonic()
            load_urls = {POOL_TWO: two, POOL_ONE: one_url, POOL_WIDE: wide}
            load = asyncio.run(_load(load_urls, tenant.key, tags, roots))
            load_done = time.monotonic()
    elapsed = time.monotonic() - started
    print(
        f"set-up {set_up:.0f} s; first tokens {ttft_done - started - set_up:.0f} s, "
        f"{timings.rounds.note()}; throughput {load_done - ttft_done:.0f} s, {load.note()}"
    )
    _report(timings, load, elapsed)


def _report(timings: Timings, load: Rounds[dict[str, LoadRound]], elapsed: float) -> None:
    pooled = {
        what: [d for diffs in _added(timings, what).values() for d in diffs] for what in MEASURES
    }
    ttft, (ttft_low, ttft_high) = median(pooled["ttft"]), median_interval(pooled["ttft"])
    headers_high = median_interval(pooled["headers"])[1]
    round_trip_high = median_interval(pooled["round_trip"])[1]
    own_parts = max(headers_high, round_trip_high) < 0.005
    if ttft_high < 0.005:
        verdict = "under the 5 ms the issue asks for, the whole interval"
    elif ttft < 0.005 and own_parts:
        verdict = "the median is under the 5 ms the issue asks for, the interval's upper end not"
    else:
        verdict = "**not** shown to be under the 5 ms the issue asks for"
    swing = median(
        [
            quantile(xs, 0.9) - median(xs)
            for xs in (
                [r[(ONE_SHOT, path, KEPT)].ttft for r in timings.rounds.kept]
                for path in (DIRECT_1, DIRECT_2)
            )
        ]
    )
    rates = {path: [r[path].rate for r in load.kept] for path in LOAD_PATHS}
    load_rows = []
    for path in LOAD_PATHS:
        rounds = [r[path] for r in load.kept]
        spread: Counter[str] = Counter()
        for r in rounds:
            spread.update(r.by_node)
        answered = ", ".join(f"{node} {count}" for node, count in sorted(spread.items()))
        load_rows.append(
            f"| {path} | {median(rates[path]):.1f} | "
            f"{', '.join(f'{x:.0f}' for x in rates[path])} | "
            f"{median([r.completion_tokens for r in rounds]):.0f} | "
            f"{_ms(median([t for r in rounds for t in r.ttft]))} | {answered} |"
        )
    # Round by round: the pools ran seconds apart in each round, so drift mostly cancels.
    vs_one = [a / b for a, b in zip(rates[POOL_TWO], rates[POOL_ONE], strict=True)]
    vs_wide = [a / b for a, b in zip(rates[POOL_TWO], rates[POOL_WIDE], strict=True)]
    per_round = [max(r[POOL_TWO].by_node.values()) for r in load.kept]
    chats = LOAD_CLIENTS * LOAD_CHATS

    body = f"""
## Placement: routing a peer to its pool, and a shared pool of two nodes

Three nodes (`python -m data_plane serve`, bundled model, each named in its own signed
bundle and placed on pool `{POOL}`): **node-1** and **node-2** with 1 engine thread each
(two of them fit the 2 cores), and **node-3** with {WIDE_THREADS} (the node's default here:
a thread per core). Real nginx rendered by the gateway agent's renderer from
`infra/nginx/gateway.conf.template` and a `GatewayConfig` whose one peer (source
`{PEER}`, its client placed on pool `{POOL}`) is routed to its pool: **pool of two**
(node-1 and node-2), **pool of one** (node-1), **pool of one, all cores** (node-3); one
nginx per config, all on loopback (no tunnel: the secure-path section measures that,
and every path here would pay it alike). `python -m tests.bench placement`
(`tests/bench/placement.py`), {elapsed:.0f} s.

The machine is shared with other work, so each round also measures the CPU time other
processes took (the machine's busy time, stolen time included, less the benchmark's own
processes). Rounds run until enough of them were quiet (other processes took at most
{QUIET:.0%} of the machine) or the part's time is up; if too few were quiet, the least
disturbed make up the number, and the text says so.

### Time to first token: direct against routed

Streamed chats of {timings.prompt_tokens} prompt tokens, {TTFT_TOKENS} tokens greedy, a fresh
prompt each time. **One-shot call**: no session; nginx picks a node of the pool (least
connections). **Continued session**: a session opened just before (not timed), then a
chat with its `X-Sanctum-Session` header, which nginx's route map sends to the node
named by the tag in the id. {len(timings.rounds.kept)} rounds after {WARMUP} of warm-up
({timings.rounds.note()}). Each round asks every path once per kind
of request and connection, the order of the paths rotating round by round. "New
connection": TCP set-up inside the timing; "kept alive": one connection per path for the
whole run. Time to first token in milliseconds; "answered by" counts the rounds per node
(nginx's least-connections balancer breaks ties round-robin, in each of its workers on
its own, so with one request at a time a kind of request often lands on the same node
round after round; each is compared with the node that answered it).

{_paths_table(timings)}

What routing adds, in milliseconds: each routed request less the same round's direct
request to the node that answered it (the session id names it), seconds apart; the
median of those differences, and in brackets a 95% distribution-free interval for that
median. "To the answer's headers": the same chats, timed to the status line and headers,
which the node sends before its prefill: the request's way through nginx to the node's
handler and back, without the model's work. "Round trip, no model work": `GET
/v1/models` after a one-shot call, `GET /v1/sessions/ID` with the session header after a
session's chat (routed by the route map, like the chat), timed right after it.

{_added_table(timings)}

Routing adds **{ttft * 1000:+.1f} ms** to the first token over all {len(pooled["ttft"])} routed
requests (95% interval {ttft_low * 1000:+.1f} to {ttft_high * 1000:+.1f} ms): {verdict}.
This interval is wider than the other two because the node's own time to the first
token (its prefill and first decode step, on one thread) swings from one request to the
next: its p90 is {swing * 1000:.0f} ms above its median straight to a node, kept alive. The
parts of the way that routing touches, measured without that swing, add at most
{headers_high * 1000:+.1f} ms (to the answer's headers) and {round_trip_high * 1000:+.1f} ms
(round trip), upper ends of their 95% intervals over every routed request.

### Aggregate throughput: a pool of two nodes against one

{LOAD_CLIENTS} clients at once, each streaming {LOAD_CHATS} chats of {LOAD_TOKENS} tokens one
after the other (greedy, a fresh prompt each), all through nginx from the peer's address.
Each round runs every pool once, the order rotating; {len(load.kept)} rounds after 1 of
warm-up ({load.note()}; a round is cut, and counts for nothing, when a pool's part
takes over {POOL_LIMIT:.0f} s). Aggregate tokens/s: completion
tokens of the round over its wall time. "TTFT": the median first token of every chat
under that load. "Answered by": chats per node, all rounds.

| pool | tokens/s (median) | each round | completion tokens a round | TTFT | answered by |
|---|---:|---|---:|---:|---|
{chr(10).join(load_rows)}

Pool of two / pool of one (node-1, 1 thread), round by round:
{", ".join(f"{x:.2f}" for x in vs_one)}: median **{median(vs_one):.2f}x**.
Pool of two / pool of one with all cores (node-3, {WIDE_THREADS} threads), round by round:
{", ".join(f"{x:.2f}" for x in vs_wide)}: median **{median(vs_wide):.2f}x**.

The two nodes share this machine's 2 cores: a second node brings no compute of its own.
Against node-1 alone (1 thread) the pool of two has twice the engine threads, and that,
not the second node, is what the first ratio shows. The second ratio is the fair one:
the same 2 cores as one node with a thread per core, or split into two processes that
each batch part of the clients (the busier node of the pool of two took
{", ".join(str(x) for x in per_round)} of each round's {chats} chats). A second node pays
where it brings cores or a GPU of its own; on this machine the point is that routing
costs nothing that matters, not that a pool is faster.
"""
    write_section("placement", body)
    print(body)
