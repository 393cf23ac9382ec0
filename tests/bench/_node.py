"""A real data-plane node for the benchmarks that drive it over HTTP, and the numbers
they all report."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.config import PoolSpec, sign_bundle
from shared.models import (
    DEFAULT_MODEL_NAME,
)
from tests.conftest import Node, Tenant, bundled_model_spec, new_node

MODEL = DEFAULT_MODEL_NAME


@contextlib.contextmanager
def running_node(tenants: list[Tenant], **env: str) -> Iterator[Node]:
    """``python -m data_plane serve`` with the bundled model and ``tenants``."""
    with placed_node(tenants, "node-1", None, **env) as node:
        yield node


@contextlib.contextmanager
def placed_node(
    tenants: list[Tenant], node_id: str, pool: PoolSpec | None, **env: str
) -> Iterator[Node]:
    """A node named ``node_id``, in ``pool``, with the bundled model and ``tenants`` (its
    bundle names the node, as a node takes no other)."""
    with tempfile.TemporaryDirectory() as tmp:
        node = new_node(
            Path(tmp), SANCTUM_DP_LOG_LEVEL="WARNING", SANCTUM_DP_NODE_ID=node_id, **env
        )
        node.start()
        try:
            bundle = node.bundle([bundled_model_spec()], tenants, node=node_id, pool=pool)
            response = node.put_config(
                sign_bundle(bundle, node.cp_key), node.management_auth(node_id)
            )
            assert response.status_code == 200, response.text
            yield node
        finally:
            node.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free interval for the median (95% by default): the order
    statistics the binomial's normal approximation points to."""
    if not values:
        return float("nan"), float("nan")
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half))
    return ordered[low], ordered[high]


@dataclass(frozen=True)
class Streamed:
    """One streamed chat as the client saw it."""

    status: int
    first: float  # seconds from sending to its first text (NaN if refused)
    end: float  # seconds from sending to its last byte
    headers: float  # seconds from sending to the answer's status line and headers
    prompt_tokens: int
    completion_tokens: int
    session: str | None  # the session it ran in (the answer's X-Sanctum-Session)


async def stream_chat(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Streamed:
    """Stream a chat and time it: to its headers, to its first text and to its end."""
    sent = time.perf_counter()
    first = 0.0
    usage: dict[str, int] = {}
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream(
        "POST", "/chat/completions", json=streamed, headers=headers
    ) as response:
        headers_at = time.perf_counter() - sent
        session = response.headers.get("x-sanctum-session")
        if response.status_code != 200:
            await response.aread()
            elapsed = time.perf_counter() - sent
            return Streamed(response.status_code, float("nan"), elapsed, headers_at, 0, 0, session)
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            choices = event.get("choices") or [{}]
            if not first and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return Streamed(
        200,
        (first or end) - sent,
        end - sent,
        headers_at,
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        session,
    )


async def first_token(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, float, float, int]:
    """Stream a chat: (status, seconds to its first text, seconds to its end, prompt and
    completion tokens)."""
    s = await stream_chat(client, body, headers)
    return s.status, s.first, s.end, s.prompt_tokens + s.completion_tokens
