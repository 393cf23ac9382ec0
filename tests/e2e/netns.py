"""Network namespaces for end-to-end tests: made, wired, entered and always removed.

Everything happens inside namespaces the test creates: veth pairs are created directly
in their namespaces (never in the host's), and cleanup kills every process left in them,
deletes them and removes the WireGuard UAPI sockets of the test's interfaces (those live
in /var/run/wireguard, shared by all namespaces). ``Namespace.run`` runs a function on a
thread that has entered the namespace, so sockets the function opens live there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
WG_SOCKET_DIR = Path("/var/run/wireguard")

_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)


class Namespace:
    """One network namespace of the test."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def sh(self, *argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec_argv(*argv), check=check, **kwargs)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def _enter(self) -> None:
        fd = os.open(NETNS_DIR / self.name, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {self.name}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` on a thread inside this namespace (one thread per namespace)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=4, thread_name_prefix=f"netns-{self.name}", initializer=self._enter
            )
        return self._executor.submit(fn, *args, **kwargs)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` inside the namespace; waits up to five minutes."""
        return self.submit(fn, *args, **kwargs).result(timeout=300)

    def ifindex(self, iface: str) -> int:
        return int(self.sh("cat", f"/sys/class/net/{iface}/ifindex").stdout.strip())

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class Lab:
    """The namespaces, links and WireGuard interfaces of one test, and their cleanup."""

    def __init__(self, prefix: str = "snc") -> None:
        self.tag = secrets.token_hex(3)
        self.prefix = f"{prefix}{self.tag}"
        self.namespaces: list[Namespace] = []
        self.wg_interfaces: list[str] = []

    def wg_name(self, suffix: str) -> str:
        """A WireGuard interface name unique on this machine (UAPI sockets are shared)."""
        name = f"{self.prefix}{suffix}"
        assert len(name) <= 15, name
        self.wg_interfaces.append(name)
        return name

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{role}")
        sh("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def namespace_named(self, role: str) -> Namespace:
        return next(ns for ns in self.namespaces if ns.name == f"{self.prefix}-{role}")

    def link(self, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        """A veth pair made inside ``a`` with its peer end moved straight into ``b``."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def bridge(self, ns: Namespace, name: str = "br0", address: str | None = None) -> None:
        """A bridge inside ``ns`` (a switch the namespaces plugged into it share)."""
        ns.ip("link", "add", name, "type", "bridge")
        ns.ip("link", "set", name, "up")
        if address is not None:
            ns.ip("address", "add", address, "dev", name)

    def plug(
        self, hub: Namespace, bridge: str, port: str, ns: Namespace, iface: str, address: str
    ) -> None:
        """Plug ``ns`` into ``bridge`` of ``hub``: a veth whose ``port`` end joins the
        bridge and whose ``iface`` end in ``ns`` gets ``address`` (CIDR)."""
        self.link(hub, port, ns, iface)
        hub.ip("link", "set", port, "master", bridge)
        ns.ip("address", "add", address, "dev", iface)

    def cleanup(self) -> list[str]:
        """Kill what runs in the namespaces, delete them, drop the UAPI sockets."""
        problems = []
        for ns in self.namespaces:
            ns.shutdown_executor()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [(ns, pid) for ns in self.namespaces for pid in ns.pids()]
            for _, pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(ns.pids() for ns in self.namespaces):
                time.sleep(0.1)
        for ns in self.namespaces:
            left = ns.pids()
            if left:
                problems.append(f"{ns.name}: processes left {left}")
            result = sh("ip", "netns", "del", ns.name, check=False)
            if result.returncode != 0:
                problems.append(f"{ns.name}: {result.stderr.strip()}")
        for iface in self.wg_interfaces:
            with contextlib.suppress(FileNotFoundError):
                (WG_SOCKET_DIR / f"{iface}.sock").unlink()
        return problems


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        problems = the_lab.cleanup()
        assert not problems, problems


def leftover_namespaces(prefix: str) -> Sequence[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
