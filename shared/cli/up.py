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
from pathlib import Path

import httpx

from shared.keyring import KEYRING_DIR, dev_keyring
from shared.keys import NODE, ensure_key_pair
from shared.trust import TRUST_FILE

NODE_NAME = "node-1"
DEMO_CLIENT = "demo"
DEMO_KNOWLEDGE_BASES = ("docs",)
READY_TIMEOUT = 180
COLLECT_INTERVAL = 2


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
    up.add_argument(
        "--admin-port", type=int, default=8100, help="control plane admin and API port (0: any)"
    )
    up.add_argument(
        "--kb",
        action="append",
        default=None,
        metavar="NAME",
        help="a knowledge base the demo client may search (repeatable; default: docs); "
        "load it with `sanctum kb ingest --client demo --kb NAME PATH...`",
    )
    up.set_defaults(func=run)


@dataclass
class Platform:
    """The child processes of ``up`` and what they reported."""

    data_dir: Path
    host: str
    api_port: int
    management_port: int
    admin_port: int = 8100
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    lines: dict[str, str] = field(default_factory=dict)
    knowledge_bases: tuple[str, ...] = DEMO_KNOWLEDGE_BASES

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
    dev_keyring(keys)  # the control plane's keys, and the key set the node trusts
    ensure_key_pair(keys, NODE)
    proc = p.spawn(
        "data-plane",
        [sys.executable, "-m", "data_plane", "serve"],
        {
            "SANCTUM_DP_DATA_DIR": str(p.data_dir / "node"),
            "SANCTUM_DP_NODE_ID": NODE_NAME,
            "SANCTUM_DP_TRUST_KEYS": str(keys / TRUST_FILE),
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


def _drain(proc: subprocess.Popen[str]) -> None:
    """Forward a child's stdout to our stderr, so its pipe never fills."""

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)

    threading.Thread(target=pump, daemon=True).start()


def _manage(env: dict[str, str], *args: str) -> dict[str, str]:
    """Run ``python -m control_plane ARGS``; return its ``SANCTUM_*=value`` stdout lines."""
    result = subprocess.run(
        [sys.executable, "-m", "control_plane", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"control plane {args[0]} failed: {last}")
    lines = (line.partition("=") for line in result.stdout.splitlines())
    return {name: value for name, sep, value in lines if sep and name.startswith("SANCTUM_")}


def start_control_plane(p: Platform, management_url: str) -> None:
    """Run the control plane and let it configure the node through a real rollout.

    ``migrate``; a Celery worker and beat when ``REDIS_URL`` is set (without it tasks run
    in-process and a reconciler does beat's job: health, catch-up, and collecting usage
    records into the ledger every :data:`COLLECT_INTERVAL` seconds); gunicorn on the
    management address; and ``bootstrap_demo``, which creates the admin (a generated
    password), an auditor with an API token, the demo client and its key, pins the
    bundled model, registers the node and rolls out to it, signed with the key the node
    trusts (the keyring's config and management keys; its log key signs tree heads).
    """
    keys = p.data_dir / "keys"
    env = {
        "SANCTUM_CP_DATA_DIR": str(p.data_dir / "control-plane"),
        "SANCTUM_CP_KEYRING": str(keys / KEYRING_DIR),
        "SANCTUM_CP_LISTEN__HOST": p.host,
        "SANCTUM_CP_LISTEN__PORT": str(p.admin_port),
        # One machine, one node: collect receipts soon after a session ends.
        "SANCTUM_CP_LEDGER__COLLECT_INTERVAL_SECONDS": str(COLLECT_INTERVAL),
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, "-m", "control_plane"]
    _manage(env, "migrate", "-v0")
    if os.environ.get("REDIS_URL"):
        _drain(p.spawn("celery-worker", [*manage, "worker"], env))
        _drain(p.spawn("celery-beat", [*manage, "beat"], env))
    else:
        _drain(p.spawn("reconciler", [*manage, "reconcile", "--interval", "10"], env))
    web = p.spawn("control-plane", [*manage, "serve"], env)
    ready = _wait_for_line(web, "SANCTUM_CP_READY", READY_TIMEOUT)
    urls = dict(part.split("=", 1) for part in ready.split()[1:])
    printed = _manage(
        env,
        "bootstrap_demo",
        "--node-name",
        NODE_NAME,
        "--node-url",
        management_url,
        "--node-public-key",
        str(keys / f"{NODE}.pub"),
        "--client-id",
        DEMO_CLIENT,
        "--embeddings",
        *(arg for kb in p.knowledge_bases for arg in ("--knowledge-base", kb)),
    )
    p.lines.update(
        SANCTUM_ADMIN_URL=urls["admin"],
        SANCTUM_ADMIN_USER=printed["SANCTUM_ADMIN_USER"],
        SANCTUM_ADMIN_PASSWORD=printed.get("SANCTUM_ADMIN_PASSWORD", "(unchanged)"),
        SANCTUM_API_KEY=printed["SANCTUM_API_KEY"],
        SANCTUM_CLIENT_ID=printed["SANCTUM_CLIENT_ID"],
        SANCTUM_MODEL=printed["SANCTUM_MODEL"],
        SANCTUM_CP_API=urls["api"],
        # `sanctum kb` loads knowledge bases through the control plane with this token
        SANCTUM_CONTROL_PLANE_URL=urls["admin"].removesuffix("admin/").rstrip("/"),
        SANCTUM_TOKEN=printed["SANCTUM_ADMIN_TOKEN"],
        SANCTUM_AUDIT_URL=urls["admin"].removesuffix("admin/") + "audit/",
        SANCTUM_AUDITOR_USER=printed["SANCTUM_AUDITOR_USER"],
        SANCTUM_AUDITOR_PASSWORD=printed.get("SANCTUM_AUDITOR_PASSWORD", "(unchanged)"),
        SANCTUM_AUDITOR_TOKEN=printed["SANCTUM_AUDITOR_TOKEN"],
        SANCTUM_LOG_KEY=str(keys / TRUST_FILE),
    )


STEPS: list[Callable[[Platform, str], None]] = [start_control_plane]


def run(args: argparse.Namespace) -> int:
    data_dir: Path = (args.data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    platform = Platform(data_dir, args.host, args.api_port, args.management_port, args.admin_port)
    platform.knowledge_bases = tuple(dict.fromkeys(args.kb or DEMO_KNOWLEDGE_BASES))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        api_url, management_url = start_data_plane(platform)
        for step in STEPS:
            step(platform, management_url)
        platform.lines = {
            "SANCTUM_API_BASE": f"{api_url}/v1",
            # the node's management listener (health; signed requests only)
            "SANCTUM_MANAGEMENT_URL": management_url,
            **platform.lines,
        }
        for name, value in platform.lines.items():
            print(f"{name}={value}", flush=True)
        print("SANCTUM_READY=1", flush=True)
        while not stop.is_set():
            if any(proc.poll() is not None for proc in platform.procs):
                print("error: a Sanctum process exited; stopping", file=sys.stderr)
                return 1
            stop.wait(0.5)
        return 0
    except (RuntimeError, ValueError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        platform.stop()
