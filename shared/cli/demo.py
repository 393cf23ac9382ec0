"""``sanctum demo``: start ``sanctum up``, walk through the main job, stop it, exit 0.

The walk-through speaks plain HTTP to the printed API base, as any OpenAI-compatible
client would: it opens a session, streams a chat, continues it, and tears it down to
show the usage summary that is all the platform keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT = 300


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the platform and show a session end to end")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory for the platform (default: a temporary one)",
    )
    demo.set_defaults(func=run)


def start_up(
    data_dir: Path, extra: list[str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``sanctum up`` on free ports and return it with the lines it printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--data-dir",
            str(data_dir),
            "--api-port",
            "0",
            "--management-port",
            "0",
            "--admin-port",
            "0",
            *(extra or []),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: dict[str, str] = {}
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            name, sep, value = line.strip().partition("=")
            if sep and name.startswith("SANCTUM_"):
                lines[name] = value
                if name == "SANCTUM_READY":
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(READY_TIMEOUT) or "SANCTUM_READY" not in lines:
        stop_up(proc)
        raise RuntimeError("sanctum up did not become ready")
    return proc, lines


def stop_up(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def say(text: str = "") -> None:
    print(text, flush=True)


def stream_chat(
    client: httpx.Client, body: dict[str, Any], session: str, on_text: Callable[[str], None]
) -> dict[str, Any]:
    """POST a streamed chat; call ``on_text`` per delta; return the last chunk (usage)."""
    last: dict[str, Any] = {}
    with client.stream(
        "POST",
        "/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers={"X-Sanctum-Session": session},
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    on_text(text)
            last = chunk if chunk.get("usage") else last
    return last


def walk_through(lines: dict[str, str]) -> None:
    base, key, model = lines["SANCTUM_API_BASE"], lines["SANCTUM_API_KEY"], lines["SANCTUM_MODEL"]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        say(f"models this key may use: {[m['id'] for m in client.get('/models').json()['data']]}")
        session = client.post("/sessions", json={"model": model, "ttl": 300}).json()["id"]
        say(f"session opened: {session}")
        for question in (
            "My name is Ada and I audit banks. Say hello to me in one sentence.",
            "What is my name?",
        ):
            print(f"\nuser> {question}\nassistant> ", end="", flush=True)
            last = stream_chat(
                client,
                {
                    "model": model,
                    "max_tokens": 48,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": question}],
                },
                session,
                lambda text: print(text, end="", flush=True),
            )
            say(f"\n  [usage: {last.get('usage')}]")
        summary = client.delete(f"/sessions/{session}").json()
        say("\nsession torn down; what Sanctum keeps of it is this usage summary:")
        say(json.dumps({k: v for k, v in summary.items() if k != "usage_record"}, indent=2))


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="sanctum-demo-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        say(f"starting sanctum up (data in {data_dir}); the first start loads the model...")
        try:
            proc, lines = start_up(data_dir)
        except RuntimeError as exc:
            say(f"error: {exc}")
            return 1
        try:
            say(f"ready: API at {lines['SANCTUM_API_BASE']}")
            walk_through(lines)
        except (httpx.HTTPError, KeyError) as exc:
            say(f"error: the walk-through failed: {type(exc).__name__}: {exc}")
            return 1
        finally:
            code = stop_up(proc)
        say(f"\nsanctum up stopped (exit {code}).")
        return 0 if code == 0 else 1
