"""``sanctum kb`` as a real process against a stand-in for the control plane's REST API.

What the CLI itself decides: where the control plane and the token come from, which files
it sends and in what batches, the line it prints per file and per node, its exit status.
The real path (gunicorn, worker, a real node) is tests/control_plane/test_e2e_knowledge.py.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import REPO, child_env

TOKEN = "t" * 40


class FakeControlPlane:
    """Knowledge-base endpoints as the control plane answers them, documents in a dict."""

    def __init__(self, *, max_request_bytes: int = 1_000_000, max_files: int = 100) -> None:
        self.limits = {
            "max_request_bytes": max_request_bytes,
            "max_files": max_files,
            "file_types": [".md", ".txt", ".pdf", ".html"],
            "max_document_bytes": 500_000,
        }
        self.kbs: dict[int, dict[str, Any]] = {}
        self.uploads: list[list[str]] = []  # document names per upload
        self.unreachable: str | None = None  # a node to report as down
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self._send(401, {"detail": "Invalid token."})
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/knowledge-bases/limits/":
                    self._send(200, fake.limits)
                elif url.path == "/api/knowledge-bases/":
                    found = [
                        kb
                        for kb in fake.kbs.values()
                        if query.get("client") in (None, kb["client"])
                        and query.get("name") in (None, kb["name"])
                    ]
                    self._send(200, {"count": len(found), "next": None, "results": found})
                else:
                    self._send(404, {"detail": "Not found."})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._authorized():
                    return
                path = urlsplit(self.path).path
                if path == "/api/knowledge-bases/":
                    data = json.loads(body)
                    kb = {"id": len(fake.kbs) + 1, **data, "document_count": 0}
                    kb.update(chunk_count=0, byte_count=0)
                    fake.kbs[kb["id"]] = kb
                    self._send(201, kb)
                    return
                assert len(body) <= fake.limits["max_request_bytes"], "upload over the cap"
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                )
                names, files = [], []
                for part in message.iter_parts():
                    field = part.get_param("name", header="content-disposition")
                    (names if field == "name" else files).append(part)
                names = [p.get_content() for p in names]
                assert len(names) == len(files)
                fake.uploads.append(names)
                results = [
                    {"name": n, "status": "ingested", "chunks": 1, "nodes": {"node-1": "ingested"}}
                    for n in names
                ]
                nodes = [{"node": "node-1", "status": "ok"}]
                if fake.unreachable:
                    nodes.append(
                        {
                            "node": fake.unreachable,
                            "status": "unreachable",
                            "error": "node unreachable: ConnectError",
                        }
                    )
                self._send(
                    200, {"complete": not fake.unreachable, "nodes": nodes, "results": results}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def control_plane():
    fake = FakeControlPlane()
    yield fake
    fake.stop()


def kb(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = child_env(**env)
    for name in ("SANCTUM_TOKEN", "SANCTUM_CONTROL_PLANE_URL"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "kb", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text("# Guide\n\nThe north gate closes at ten at night.\n")
    (root / "notes.txt").write_text("Deliveries arrive on Tuesdays.\n")
    (root / "sub" / "deep.md").write_text("Nested documents keep their relative path.\n")
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "huge.md").write_text("x" * 600_000)
    (root / ".hidden.md").write_text("Never sent.")
    return root


def test_ingest_sends_usable_files_by_their_relative_names(control_plane, folder):
    done = kb(
        "ingest", "--client", "acme", "--kb", "docs", str(folder), "nowhere.md",
        "--control-plane", control_plane.url + "/api/", "--token", TOKEN,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert control_plane.kbs[1]["name"] == "docs"  # made, since it did not exist
    assert sorted(n for batch in control_plane.uploads for n in batch) == [
        "guide.md",
        "notes.txt",
        "sub/deep.md",
    ]
    out = done.stdout
    assert "ingested   sub/deep.md (1 chunk)" in out
    assert "skipped    photo.png: unsupported file type (.png)" in out
    assert "skipped    huge.md: too large (600000 bytes; at most 500000)" in out
    assert "skipped    nowhere.md: no such file or folder" in out
    assert ".hidden.md" not in out
    assert "acme/docs: 3 ingested (3 chunks), 0 unchanged, 3 skipped" in out


def test_uploads_stay_within_the_cap_and_file_count(folder, tmp_path):
    fake = FakeControlPlane(max_request_bytes=8_000, max_files=2)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(5):
        (many / f"{i}.md").write_text(f"Document {i}. " + "y" * 2_000)
    try:
        done = kb("ingest", "--client", "acme", "--kb", "docs", "--no-progress", str(many),
                  SANCTUM_CONTROL_PLANE_URL=fake.url, SANCTUM_TOKEN=TOKEN)  # fmt: skip
    finally:
        fake.stop()
    assert done.returncode == 0, done.stderr
    assert len(fake.uploads) >= 3 and all(len(batch) <= 2 for batch in fake.uploads)


def test_a_node_that_was_not_reached_is_named_and_fails_the_run(control_plane, folder):
    control_plane.unreachable = "node-2"
    done = kb("ingest", "--client", "acme", "--kb", "docs", str(folder / "guide.md"),
              SANCTUM_CONTROL_PLANE_URL=control_plane.url, SANCTUM_TOKEN=TOKEN)  # fmt: skip
    assert done.returncode == 1
    assert "ingested   guide.md (1 chunk)" in done.stdout
    assert "node node-2 not reached (node unreachable: ConnectError)" in done.stderr


def test_the_token_and_the_control_plane_are_required_and_named(control_plane, folder):
    no_token = kb("list", SANCTUM_CONTROL_PLANE_URL=control_plane.url)
    assert no_token.returncode == 1 and "--token or $SANCTUM_TOKEN" in no_token.stderr
    wrong = kb("list", "--control-plane", control_plane.url, "--token", "nope")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    down = kb("list", "--control-plane", "http://127.0.0.1:9", "--token", TOKEN)
    assert down.returncode == 1 and "can't reach the control plane" in down.stderr
    nothing = kb("ingest", "--client", "acme", "--kb", "docs", str(folder / "photo.png"),
                 SANCTUM_CONTROL_PLANE_URL=control_plane.url, SANCTUM_TOKEN=TOKEN)  # fmt: skip
    assert nothing.returncode == 1 and "nothing usable" in nothing.stderr
