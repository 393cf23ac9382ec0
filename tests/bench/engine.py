"""Engine throughput: Sanctum's batching scheduler against llama-cpp-python, side by side.

One run, one machine, one model (the bundled SmolLM2-135M), the same eight prompts and
the same token counts for every system:

(a) llama-cpp-python called directly (``Llama.create_completion``), one stream;
(b) ``python -m llama_cpp.server`` with 8 concurrent clients;
(c) Sanctum's data plane over HTTP with 1 and with 8 concurrent clients.

Every system gets the same threads, context per sequence and attention kernel (flash
attention, which Sanctum uses so that a session's output does not depend on its batch
mates), greedy decoding and no repeat penalty, so at temperature 0 they write the same
text (checked and reported). The systems take turns for ``ROUNDS`` rounds (all servers
up, one of them working at a time) and each is reported by its median round.
Completion tokens are counted by tokenizing each answer with the model's own vocabulary,
the same way for every system. TTFT is the time from sending a request to its first
text; the inter-token latency of a stream is (last text - first text) / (tokens - 1).
Also reported: the data plane's resident memory with 1, 8 and 32 open sessions.

``python -m tests.bench engine`` (or ``make bench``); takes about five minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.config import ClientLimits, ModelSpec, file_sha256
from shared.models import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    bundled_gguf_path,
)
from tests.bench import write_section

MAX_TOKENS = 96
CLIENTS = 8
# every system runs once per round, in turn; each reports its median round
# (scripts/gpu-check.sh runs one: SANCTUM_BENCH_ROUNDS=1)
ROUNDS = int(os.environ.get("SANCTUM_BENCH_ROUNDS", "3"))
THREADS = max(1, os.cpu_count() or 1)
# Layers on the GPU, the same for every system: the node reads this variable itself.
GPU_LAYERS = int(os.environ.get("SANCTUM_DP_ENGINE__N_GPU_LAYERS", "0"))
PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The history of the printing press begins in the fifteenth century, when",
    "Here is a short guide to growing tomatoes at home. First,",
    "The spaceship drifted silently past the rings of Saturn while the crew",
    "A good breakfast gives you energy for the whole day. For example,",
    "The detective looked at the muddy footprints on the kitchen floor and",
    "Mountains are formed over millions of years when",
    "My favourite place in the city is the old library, because",
]
SAMPLING = {"temperature": 0.0, "max_tokens": MAX_TOKENS, "repeat_penalty": 1.0}


@dataclass
class Sample:
    """One streamed answer."""

    sent: float
    first: float
    last: float
    text: str
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def itl(self) -> float:
        return (self.last - self.first) / max(1, self.tokens - 1)


@dataclass
class Run:
    name: str
    clients: int
    samples: list[Sample]
    wall: float

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.samples)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall

    def ttft(self, q: float) -> float:
        return _quantile([s.ttft for s in self.samples], q)

    @property
    def itl_p50(self) -> float:
        return statistics.median(s.itl for s in self.samples)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- clients -----------------------------------------------------------------------------


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    sent = time.perf_counter()
    first = last = 0.0
    parts: list[str] = []
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                break
            choices = json.loads(data).get("choices") or [{}]
            text = choices[0].get("text") or ""
            if text:
                last = time.perf_counter()
                first = first or last
                parts.append(text)
    return Sample(sent, first, last, "".join(parts))


async def _http_run(name: str, base: str, headers: dict[str, str], model: str, clients: int) -> Run:
    """``clients`` concurrent streams; with one client, the prompts one after another."""
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:

        def body(prompt: str) -> dict[str, Any]:
            return {"model": model, "prompt": prompt, "stream": True, **SAMPLING}

        started = time.perf_counter()
        if clients == 1:
            samples = [await _stream(client, "/completions", body(p)) for p in PROMPTS]
        else:
            samples = list(
                await asyncio.gather(
                    *(
                        _stream(client, "/completions", body(PROMPTS[i % len(PROMPTS)]))
                        for i in range(clients)
                    )
                )
            )
        return Run(name, clients, samples, time.perf_counter() - started)


def _direct_run(path: str) -> Run:
    """(a): llama-cpp-python's ``Llama`` in this process, one stream."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=path,
        n_ctx=DEFAULT_CONTEXT_SIZE,
        n_gpu_layers=GPU_LAYERS,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        flash_attn=True,
        verbose=False,
    )
    try:
        llm.create_completion(PROMPTS[0], max_tokens=4, temperature=0.0)  # warm up
        samples: list[Sample] = []
        started = time.perf_counter()
        for prompt in PROMPTS:
            sent = time.perf_counter()
            first = last = 0.0
            parts: list[str] = []
            for chunk in llm.create_completion(prompt, stream=True, **SAMPLING):  # type: ignore[arg-type]
                text = chunk["choices"][0]["text"]  # type: ignore[index]
                if text:
                    last = time.perf_counter()
                    first = first or last
                    parts.append(text)
            samples.append(Sample(sent, first, last, "".join(parts)))
        return Run("(a) llama-cpp-python, direct", 1, samples, time.perf_counter() - started)
    finally:
        llm.close()


# --- servers -----------------------------------------------------------------------------


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


@contextlib.contextmanager
def _llama_server(path: str) -> Iterator[str]:
    """(b): ``python -m llama_cpp.server`` on a free port (its API base), given the same
    threads, context and attention kernel, and no logits for prompt tokens;
    ``interrupt_requests`` off so every client gets its answer (by default a new request
    cuts off the stream in progress)."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            path,
            "--model_alias",
            DEFAULT_MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(DEFAULT_CONTEXT_SIZE),
            "--n_gpu_layers",
            str(GPU_LAYERS),
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
            "--logits_all",
            "False",
            "--interrupt_requests",
            "False",
            "--flash_attn",
            "True",
            "--verbose",
            "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        _wait_http(f"{base}/models", proc)
        asyncio.run(_http_run("warm-up", base, {}, DEFAULT_MODEL_NAME, 1))
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def _sanctum_node(spec: ModelSpec) -> Iterator[tuple[str, dict[str, str], int]]:
    """(c): a real ``python -m data_plane serve`` node: its API base, headers and pid."""
    from tests.conftest import make_tenant, new_node

    with tempfile.TemporaryDirectory() as tmp:
        node = new_node(
            Path(tmp), SANCTUM_DP_ENGINE__THREADS=str(THREADS), SANCTUM_DP_LOG_LEVEL="WARNING"
        )
        tenant = make_tenant("bench", (DEFAULT_MODEL_NAME,), limits=ClientLimits(max_sessions=64))
        node.start()
        try:
            node.push([spec], [tenant])
            headers = {"Authorization": f"Bearer {tenant.key}"}
            base = f"{node.api}/v1"
            asyncio.run(_http_run("warm-up", base, headers, DEFAULT_MODEL_NAME, 1))
            assert node.proc is not None
            yield base, headers, node.proc.pid
        finally:
            node.stop()


def _open_sessions(base: str, headers: dict[str, str], pid: int) -> dict[int, float]:
    """Open sessions one by one, each with a short turn so it holds KV state."""
    memory: dict[int, float] = {}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        for n in range(1, 33):
            sid = client.post("/sessions", json={"model": DEFAULT_MODEL_NAME}).json()["id"]
            client.post(
                "/completions",
                json={
                    "model": DEFAULT_MODEL_NAME,
                    "prompt": PROMPTS[n % len(PROMPTS)],
                    "max_tokens": 8,
                    "temperature": 0,
                },
                headers={"X-Sanctum-Session": sid},
            ).raise_for_status()
            if n in (1, 8, 32):
                memory[n] = _rss_mib(pid)
    return memory


# --- the report --------------------------------------------------------------------------


def _count_tokens(path: str, runs: list[Run]) -> None:
    from llama_cpp import Llama

    vocab = Llama(model_path=path, vocab_only=True, verbose=False)
    for run in runs:
        for s in run.samples:
            s.tokens = len(vocab.tokenize(s.text.encode(), add_bos=False, special=False))


def main() -> None:
    path = str(bundled_gguf_path())
    spec = ModelSpec(
        name=DEFAULT_MODEL_NAME,
        version=DEFAULT_MODEL_VERSION,
        sha256=file_sha256(path),
        path=path,
        context_size=DEFAULT_CONTEXT_SIZE,
    )
    started = time.monotonic()
    rounds: list[list[Run]] = []
    with _llama_server(path) as llama_base, _sanctum_node(spec) as (base, headers, pid):
        # The systems take turns, round after round, so that a slow spell of this shared
        # machine does not fall on one of them only.
        for n in range(ROUNDS):
            rounds.append(
                [
                    _direct_run(path),
                    asyncio.run(
                        _http_run(
                            "(b) llama_cpp.server", llama_base, {}, DEFAULT_MODEL_NAME, CLIENTS
                        )
                    ),
                    asyncio.run(
                        _http_run("(c) Sanctum, 1 client", base, headers, DEFAULT_MODEL_NAME, 1)
                    ),
                    asyncio.run(
                        _http_run(
                            f"(c) Sanctum, {CLIENTS} clients",
                            base,
                            headers,
                            DEFAULT_MODEL_NAME,
                            CLIENTS,
                        )
                    ),
                ]
            )
            print(f"  round {n + 1} of {ROUNDS}: done", flush=True)
        memory = {0: _rss_mib(pid)}
        memory.update(_open_sessions(base, headers, pid))
    for runs in rounds:
        _count_tokens(path, runs)
    # Each system's median round by aggregate tokens/s (its latencies from that round).
    direct, server, one, many = (
        sorted((r[i] for r in rounds), key=lambda run: run.tps)[len(rounds) // 2] for i in range(4)
    )
    runs = [direct, server, one, many]
    per_round = [(r[2].tps / r[0].tps, r[3].tps / r[1].tps) for r in rounds]

    rows = [
        "| system | clients | completion tokens | aggregate tokens/s | TTFT p50 | TTFT p95 "
        "| inter-token p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        rows.append(
            f"| {r.name} | {r.clients} | {r.tokens} | {r.tps:.1f} | {r.ttft(0.5) * 1000:.0f} ms "
            f"| {r.ttft(0.95) * 1000:.0f} ms | {r.itl_p50 * 1000:.1f} ms |"
        )
    single = one.tps / direct.tps
    batched = many.tps / server.tps
    ttft_ok = many.ttft(0.95) <= server.ttft(0.95)
    same = sum(a.text == b.text for a, b in zip(direct.samples, one.samples, strict=True))
    same_many = sum(a.text == b.text for a, b in zip(server.samples, many.samples, strict=True))
    body = "\n".join(
        [
            f"{len(PROMPTS)} prompts, {MAX_TOKENS} completion tokens each at temperature 0, "
            f"{THREADS} threads{f', {GPU_LAYERS} GPU layers' if GPU_LAYERS else ''}, "
            f"context {DEFAULT_CONTEXT_SIZE} per sequence, bundled "
            f"{DEFAULT_MODEL_NAME} ({DEFAULT_MODEL_VERSION}). One client sends the prompts one "
            f"after another; {CLIENTS} clients send one each at once. The systems took "
            f"turns for {ROUNDS} rounds; each row is that system's median round by "
            f"aggregate tokens/s. Run time {time.monotonic() - started:.0f} s.",
            "",
            *rows,
            "",
            "| target | measured | met |",
            "|---|---:|:-:|",
            f"| (c) 1 client / (a) tokens/s >= 0.9 | {single:.2f} "
            f"| {'yes' if single >= 0.9 else 'no'} |",
            f"| (c) {CLIENTS} clients / (b) tokens/s >= 2 | {batched:.2f} "
            f"| {'yes' if batched >= 2 else 'no'} |",
            f"| (c) {CLIENTS} clients TTFT p95 <= (b)'s | {many.ttft(0.95) * 1000:.0f} ms vs "
            f"{server.ttft(0.95) * 1000:.0f} ms | {'yes' if ttft_ok else 'no'} |",
            "",
            "The same ratios round by round: (c) 1 client / (a) "
            + ", ".join(f"{a:.2f}" for a, _ in per_round)
            + f"; (c) {CLIENTS} clients / (b) "
            + ", ".join(f"{b:.2f}" for _, b in per_round)
            + ".",
            "",
            f"Same text as the baseline at temperature 0: {same}/{len(PROMPTS)} answers of (c) "
            f"with 1 client match (a); {same_many}/{CLIENTS} of (c) with {CLIENTS} clients "
            "match (b).",
            "",
            "Resident memory of the data-plane process (model loaded, "
            "8 KV sequences of the context reserved):",
            "",
            "| open sessions | RSS |",
            "|---:|---:|",
            *(f"| {n} | {mib:.0f} MiB |" for n, mib in memory.items()),
        ]
    )
    print(body, flush=True)
    write_section("engine", body)


if __name__ == "__main__":
    main()
