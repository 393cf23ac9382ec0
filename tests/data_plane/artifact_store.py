"""An artifact store for model files, as operators run one on the storage link: real
nginx serving a directory on loopback (docs/operations.md, "Models on the storage link").

``/`` serves the directory at full speed; ``/slow/`` serves the same files at a
limited rate, so a test can watch a fetch in progress. Requests are logged (path and
status only) so a test can count the fetches.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

NEEDS_NGINX = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.environ.get("CI"), reason="nginx not installed"
)

_CONF = """\
daemon off;
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format fetches '$request_method $uri $status $body_bytes_sent';
    access_log {prefix}/access.log fetches;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /slow/ {{
            alias {root}/;
            limit_rate {rate};
        }}
    }}
}}
"""


@dataclass
class ArtifactStore:
    root: Path
    prefix: Path
    port: int

    def url(self, name: str, slow: bool = False) -> str:
        return f"http://127.0.0.1:{self.port}/{'slow/' if slow else ''}{name}"

    def fetches(self, name: str) -> list[str]:
        """The GET lines logged for ``name`` (either location)."""
        log = (self.prefix / "access.log").read_text()
        return [line for line in log.splitlines() if line.startswith("GET ") and name in line]


@pytest.fixture(scope="module")
def artifact_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtifactStore]:
    """nginx on loopback serving a directory; put files in ``store.root``."""
    base = tmp_path_factory.mktemp("artifact-store")
    root, prefix = base / "files", base / "nginx"
    root.mkdir()
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    rate = os.environ.get("SANCTUM_TEST_STORE_SLOW_RATE", "24m")
    conf = prefix / "nginx.conf"
    # As root, workers would run as nobody, who can't read pytest's private directories.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(_CONF.format(user=user, prefix=prefix, root=root, port=port, rate=rate))
    proc = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"nginx did not start: {proc.communicate()[1]!r}") from None
            time.sleep(0.05)
    try:
        yield ArtifactStore(root, prefix, port)
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
