"""A real data-plane node for the benchmarks that drive it over HTTP, and the numbers
they all report."""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from shared.models import (
    DEFAULT_MODEL_NAME,
)
from tests.conftest import Node, Tenant, bundled_model_spec, new_node

MODEL = DEFAULT_MODEL_NAME


@contextlib.contextmanager
def running_node(tenants: list[Tenant], **env: str) -> Iterator[Node]:
    """``python -m data_plane serve`` with the bundled model and ``tenants``."""
    with tempfile.TemporaryDirectory() as tmp:
        node = new_node(Path(tmp), SANCTUM_DP_LOG_LEVEL="WARNING", **env)
        node.start()
        try:
            node.push([bundled_model_spec()], tenants)
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


async def first_token(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, float, float, int]:
    """Stream a chat: (status, seconds to its first text, seconds to its end, prompt and
    completion tokens)."""
    sent = time.perf_counter()
    first = 0.0
    tokens = 0
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream(
        "POST", "/chat/completions", json=streamed, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, float("nan"), time.perf_counter() - sent, 0
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or {}
            tokens += usage.get("total_tokens", 0)
            choices = event.get("choices") or [{}]
            if not first and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return 200, (first or end) - sent, end - sent, tokens
