"""PostgreSQL for a control plane that runs inside a network namespace.

The test cluster (``scripts/test-services.sh start``) listens on the host's loopback,
which a namespace cannot reach: its own loopback is another one. Unix sockets are not
namespaced, though (they are files), so the test process, in the host's namespace, runs
a ``SocketForwarder``: it listens on ``<dir>/.s.PGSQL.<port>``, the file libpq opens for
``host=<dir> port=<port>``, and relays each connection to ``127.0.0.1:<port>``. A
control plane anywhere on the machine then reaches the cluster through that directory.

``throwaway_database`` makes a database of its own for one test module (as the test
role, which may create databases) and drops it afterwards, connections and all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import REPO


class SocketForwarder:
    """Relays each connection to a Unix socket to a TCP address, byte for byte."""

    def __init__(self, path: Path, target: tuple[str, int]) -> None:
        self.path = path
        self.target = target
        self._closed = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._listener.settimeout(0.5)  # so the accept loop sees ``close`` promptly
        self._thread = threading.Thread(target=self._accept, name="pg-forwarder", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._connections += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Copy until ``src`` ends, then end ``dst``'s writing side (half-close)."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self.path.unlink(missing_ok=True)


def cluster_url() -> str:
    """The URL of the test role on the test cluster; fails in CI without it, else skips."""
    script = REPO / "scripts" / "test-services.sh"
    result = subprocess.run(
        [str(script), "database-url"], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        reason = f"no PostgreSQL ({script} start): {result.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return result.stdout.strip()


@dataclass
class Database:
    """A throwaway database and the URL a namespaced control plane reaches it by."""

    name: str
    url: str  # DATABASE_URL, through the forwarder's socket directory
    direct_url: str  # the same database over TCP, for the test process itself

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, read straight from the database (not through the API)."""
        import psycopg

        with psycopg.connect(self.direct_url) as conn:
            return conn.execute(sql).fetchall()


@contextlib.contextmanager
def throwaway_database(socket_dir: Path) -> Iterator[Database]:
    """A fresh ``sanctum_e2e_<hex>`` database on the test cluster, reachable through a
    Unix socket in ``socket_dir``; dropped (with any connection left) at the end."""
    import psycopg

    cluster = urlsplit(cluster_url())
    assert cluster.hostname and cluster.port and cluster.username and cluster.password
    name = f"sanctum_e2e_{secrets.token_hex(4)}"
    admin = cluster._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    socket_dir.mkdir(parents=True, exist_ok=True)
    forwarder = SocketForwarder(
        socket_dir / f".s.PGSQL.{cluster.port}", (cluster.hostname, cluster.port)
    )
    # The socket directory goes in the host part, percent-encoded (dj-database-url's
    # form for a Unix socket), so it lands in Django's HOST and PORT settings.
    host = quote(str(socket_dir), safe="")
    user = f"{quote(cluster.username, safe='')}:{quote(cluster.password, safe='')}"
    try:
        yield Database(
            name,
            f"postgresql://{user}@{host}:{cluster.port}/{name}",
            cluster._replace(path=f"/{name}").geturl(),
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        forwarder.close()
