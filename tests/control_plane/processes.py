"""Real processes for the control plane's integration tests: redis-server, gunicorn
(``python -m control_plane serve``), a Celery worker and beat, and management commands.

Each test gets its own data directory (SQLite file, signing key) and its own Redis on a
free port; everything is stopped when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port


def require_tool(name: str) -> str:
    """The tool's path; skip without it, except in CI where it must be installed."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (make setup installs it)")
        pytest.skip(f"{name} is not installed")
    return path


class Process:
    """A child process whose output is collected; waits for a line that says it's ready."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.output: list[str] = []
        self._lines = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lines:
                self.output.append(line)
                self._lines.notify_all()
        with self._lines:
            self._lines.notify_all()

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lines:
            while True:
                for line in self.output[seen:]:
                    if needle in line:
                        return line
                seen = len(self.output)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} never printed {needle!r}:\n" + self.tail())
                self._lines.wait(min(remaining, 0.5))

    def tail(self, lines: int = 60) -> str:
        return "".join(self.output[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._pump_thread.join(timeout=10)  # the output holds every line the process wrote


class RedisServer:
    """A throwaway redis-server on a free loopback port, no persistence.

    ``stop()`` and ``start()`` again bring it back on the same port, empty (a broker
    outage that loses what was queued)."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_tool("redis-server")
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> RedisServer:
        self.process = Process(
            "redis-server",
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            dict(os.environ),
        )
        self.process.wait_for("Ready to accept connections", timeout=30)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.stop()


class ControlPlane:
    """One control-plane installation: its data dir, and the processes serving it."""

    def __init__(self, data_dir: Path, redis_url: str | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SANCTUM_CP_", "DJANGO_", "DATABASE_URL", "REDIS_URL"))
        }
        self.env.update(
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            SANCTUM_CP_DATA_DIR=str(data_dir),
            **env,
        )
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.processes: list[Process] = []
        self.admin_url = self.api_url = ""

    def manage(self, *args: str, timeout: float = 300) -> dict[str, str]:
        """Run a management command; return its ``KEY=value`` stdout lines."""
        result = subprocess.run(
            [sys.executable, "-m", "control_plane", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def start(self, name: str, *args: str) -> Process:
        process = Process(name, [sys.executable, "-m", "control_plane", *args], self.env)
        self.processes.append(process)
        return process

    def serve(self) -> Process:
        web = self.start("gunicorn", "serve", "--port", "0", "--workers", "2")
        line = web.wait_for("SANCTUM_CP_READY", timeout=60)
        parts = dict(p.split("=", 1) for p in line.split()[1:])
        self.admin_url, self.api_url = parts["admin"], parts["api"]
        return web

    def worker(self) -> Process:
        worker = self.start("celery worker", "worker", "--concurrency", "2")
        worker.wait_for(" ready.", timeout=60)
        return worker

    def beat(self) -> Process:
        beat = self.start("celery beat", "beat")
        beat.wait_for("beat: Starting", timeout=60)
        return beat

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url.rstrip("/"),
            headers={"Authorization": f"Token {token}"},
            timeout=60,
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


class DataPlaneNode:
    """A real ``python -m data_plane serve`` with ports fixed for its whole life, so a
    restart comes back at the management URL the control plane has registered."""

    def __init__(self, data_dir: Path, name: str, trust_keys: Path, node_key: Path) -> None:
        self.name = name
        self.api_port, self.management_port = free_port(), free_port()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SANCTUM_", "DJANGO_"))
        }
        self.env.update(
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            SANCTUM_DP_DATA_DIR=str(data_dir),
            SANCTUM_DP_NODE_ID=name,
            SANCTUM_DP_TRUST_KEYS=str(trust_keys),
            SANCTUM_DP_NODE_PRIVATE_KEY=str(node_key),
            SANCTUM_DP_LISTEN__API_HOST="127.0.0.1",
            SANCTUM_DP_LISTEN__API_PORT=str(self.api_port),
            SANCTUM_DP_LISTEN__MANAGEMENT_HOST="127.0.0.1",
            SANCTUM_DP_LISTEN__MANAGEMENT_PORT=str(self.management_port),
            SANCTUM_DP_ENGINE__THREADS="1",
        )
        self.process: Process | None = None

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 180) -> DataPlaneNode:
        self.process = Process(
            f"data plane {self.name}", [sys.executable, "-m", "data_plane", "serve"], self.env
        )
        self.process.wait_for("SANCTUM_DP_READY", timeout=timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
