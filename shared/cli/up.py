"""``sanctum up``: the whole platform on this machine, on embedded defaults.

It runs each part as its own process, exactly as an operator would run them apart
(this module imports neither plane), and stays in the foreground until Ctrl-C or
SIGTERM, then stops them cleanly. When everything is ready it prints ``KEY=value``
lines, each alone on a line, for scripts to read.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from shared.config import (
    ApiKeySpec,
    ClientLimits,
    ClientSpec,
    ConfigBundle,
    ModelSpec,
    file_sha256,
    new_api_key,
    sign_bundle,
)
from shared.keys import CONTROL_PLANE, NODE, ensure_key_pair
from shared.models import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    bundled_gguf_path,
)

NODE_NAME = "node-1"
DEMO_CLIENT = "demo"
READY_TIMEOUT = 180


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get("SANCTUM_DATA_DIR") or Path(base) / "sanctum")


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser("up", help="run the whole platform here, in the foreground")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where keys, config and databases live (default: %(default)s)",
    )
    up.add_argument("--host", default="127.0.0.1", help="address every listener binds to")
    up.add_argument("--api-port", type=int, default=8000, help="client API port (0: any)")
    up.add_argument(
        "--management-port", type=int, default=8001, help="data-plane management port (0: any)"
    )
    up.set_defaults(func=run)


@dataclass
class Platform:
    """The child processes of ``up`` and what they reported."""

    data_dir: Path
    host: str
    api_port: int
    management_port: int
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    lines: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=None,  # children log to our stderr
            text=True,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """Read the child's stdout until a line starts with ``prefix``; then keep draining it."""
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not ready.is_set() and line.startswith(prefix):
                found.append(line.strip())
                ready.set()
            else:
                sys.stderr.write(line)
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not found:
        raise RuntimeError(f"{getattr(proc, 'name', 'child')} did not become ready")
    return found[0]


def start_data_plane(p: Platform) -> tuple[str, str]:
    """Start the node; returns (api_url, management_url)."""
    keys = p.data_dir / "keys"
    ensure_key_pair(keys, CONTROL_PLANE)
    ensure_key_pair(keys, NODE)
    proc = p.spawn(
        "data-plane",
        [sys.executable, "-m", "data_plane", "serve"],
        {
            "SANCTUM_DP_DATA_DIR": str(p.data_dir / "node"),
            "SANCTUM_DP_NODE_ID": NODE_NAME,
            "SANCTUM_DP_CONTROL_PLANE_PUBLIC_KEY": str(keys / f"{CONTROL_PLANE}.pub"),
            "SANCTUM_DP_NODE_PRIVATE_KEY": str(keys / f"{NODE}.key"),
            "SANCTUM_DP_LISTEN__API_HOST": p.host,
            "SANCTUM_DP_LISTEN__API_PORT": str(p.api_port),
            "SANCTUM_DP_LISTEN__MANAGEMENT_HOST": p.host,
            "SANCTUM_DP_LISTEN__MANAGEMENT_PORT": str(p.management_port),
        },
    )
    ready = _wait_for_line(proc, "SANCTUM_DP_READY", READY_TIMEOUT)
    fields = dict(part.split("=", 1) for part in ready.split()[1:])
    return fields["api"], fields["management"]


def push_dev_config(p: Platform, management_url: str) -> None:
    """Sign a development bundle with the dev control-plane key and push it to the node.

    It pins the bundled model and makes a demo client with a fresh key, shown here once.
    """
    key = ensure_key_pair(p.data_dir / "keys", CONTROL_PLANE)
    gguf = bundled_gguf_path()
    api_key, prefix, digest = new_api_key()
    bundle = ConfigBundle(
        version=time.time_ns() // 1_000_000,  # a later run always has a higher version
        issued_at=datetime.now(UTC),
        node=NODE_NAME,
        models=(
            ModelSpec(
                name=DEFAULT_MODEL_NAME,
                version=DEFAULT_MODEL_VERSION,
                sha256=file_sha256(str(gguf)),
                path=str(gguf),
                context_size=DEFAULT_CONTEXT_SIZE,
            ),
        ),
        clients=(
            ClientSpec(
                id=DEMO_CLIENT,
                name="Demo client",
                api_keys=(ApiKeySpec(prefix=prefix, sha256=digest),),
                models=(DEFAULT_MODEL_NAME,),
                embeddings=True,
                limits=ClientLimits(),
            ),
        ),
    )
    response = httpx.put(
        f"{management_url}/internal/config",
        content=sign_bundle(bundle, key),
        headers={"Content-Type": "application/jose"},
        timeout=120,
    )
    response.raise_for_status()
    p.lines.update(
        SANCTUM_API_KEY=api_key, SANCTUM_CLIENT_ID=DEMO_CLIENT, SANCTUM_MODEL=DEFAULT_MODEL_NAME
    )


STEPS: list[Callable[[Platform, str], None]] = [push_dev_config]


def run(args: argparse.Namespace) -> int:
    data_dir: Path = (args.data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    platform = Platform(data_dir, args.host, args.api_port, args.management_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        api_url, management_url = start_data_plane(platform)
        for step in STEPS:
            step(platform, management_url)
        platform.lines = {"SANCTUM_API_BASE": f"{api_url}/v1", **platform.lines}
        for name, value in platform.lines.items():
            print(f"{name}={value}", flush=True)
        print("SANCTUM_READY=1", flush=True)
        while not stop.is_set():
            if any(proc.poll() is not None for proc in platform.procs):
                print("error: a Sanctum process exited; stopping", file=sys.stderr)
                return 1
            stop.wait(0.5)
        return 0
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        platform.stop()
