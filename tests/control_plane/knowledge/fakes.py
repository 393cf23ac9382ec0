"""A stand-in for a node's knowledge-base endpoints, for unit tests of the control plane's
loading service and API.

It follows the contract the real node implements (``data_plane/api/knowledge_bases.py``):
every request must be signed by the control plane's key (401 ``invalid_signature``);
``GET /internal/knowledge-bases`` states the ingest limits; ``POST .../documents`` takes
base64 JSON and answers per file (ingested, unchanged, or skipped with a reason); the
``DELETE`` routes answer 404 for what it does not hold. It keeps each document's hash and
chunk count, and the bytes only of the last request (so a test can check what arrived).
The end-to-end test uses a real node instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.management import KNOWLEDGE_BASES_PATH
from shared.signed_request import ReplayGuard, SignedRequestError, SignedRequestVerifier
from shared.trust import MANAGEMENT, KeySet

FILE_TYPES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


def _error(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeKnowledgeNode:
    def __init__(self, trust: KeySet, name: str, *, max_request_bytes: int = 1_000_000) -> None:
        self.verifier = SignedRequestVerifier(
            lambda: trust.public_keys(MANAGEMENT), name, ReplayGuard()
        )
        self.max_request_bytes = max_request_bytes
        self.max_document_bytes = 16 * 1_048_576
        # (client, kb) -> {document name: (sha256, chunks)}
        self.held: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
        self.ingest_requests: list[list[str]] = []  # names per POST, in order
        self.last_bytes: dict[str, bytes] = {}
        self.fail_posts_with: tuple[int, dict[str, Any]] | None = None
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def documents(self, client: str, kb: str) -> dict[str, tuple[str, int]]:
        with self._lock:
            return dict(self.held.get((client, kb), {}))

    def start(self) -> FakeKnowledgeNode:
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _signed(self, body: bytes) -> bool:
                try:
                    node.verifier.verify(
                        self.headers.get("Authorization"), self.command, self.path, body
                    )
                except SignedRequestError as exc:
                    self._send(401, _error(str(exc), "invalid_signature", "authentication_error"))
                    return False
                return True

            def _route(self) -> tuple[list[str], dict[str, list[str]]]:
                url = urlsplit(self.path)
                rest = url.path.removeprefix(KNOWLEDGE_BASES_PATH).strip("/")
                return [p for p in rest.split("/") if p], parse_qs(url.query)

            def do_GET(self) -> None:
                if not self._signed(b""):
                    return
                parts, _ = self._route()
                if parts:
                    self._send(404, _error("not found", "not_found"))
                    return
                self._send(
                    200,
                    {
                        "knowledge_bases": [],
                        "ingest": {
                            "file_types": list(FILE_TYPES),
                            "max_document_bytes": node.max_document_bytes,
                            "max_request_bytes": node.max_request_bytes,
                        },
                    },
                )

            def do_POST(self) -> None:
                body = self._body()
                if not self._signed(body):
                    return
                parts, _ = self._route()
                if len(parts) != 3 or parts[2] != "documents":
                    self._send(404, _error("not found", "not_found"))
                    return
                if len(body) > node.max_request_bytes:
                    self._send(413, _error("request too large", "request_too_large"))
                    return
                if node.fail_posts_with is not None:
                    self._send(*node.fail_posts_with)
                    return
                client, kb = parts[0], parts[1]
                documents = json.loads(body)["documents"]
                results = []
                with node._lock:
                    node.ingest_requests.append([d["name"] for d in documents])
                    node.last_bytes = {}
                    held = node.held.setdefault((client, kb), {})
                    for doc in documents:
                        name, data = doc["name"], base64.b64decode(doc["content"])
                        node.last_bytes[name] = data
                        digest = hashlib.sha256(data).hexdigest()
                        suffix = PurePosixPath(name).suffix.lower()
                        if suffix not in FILE_TYPES:
                            results.append(
                                {"name": name, "status": "skipped", "chunks": 0,
                                 "reason": f"unsupported file type ({suffix or 'none'})"}
                            )  # fmt: skip
                        elif not data.strip():
                            results.append(
                                {"name": name, "status": "skipped", "chunks": 0,
                                 "reason": "no text in this file"}
                            )  # fmt: skip
                        elif name in held and held[name][0] == digest:
                            results.append(
                                {"name": name, "status": "unchanged", "chunks": held[name][1]}
                            )
                        else:
                            chunks = 1 + len(data) // 1000
                            held[name] = (digest, chunks)
                            results.append({"name": name, "status": "ingested", "chunks": chunks})
                self._send(200, {"client": client, "knowledge_base": kb, "results": results})

            def do_DELETE(self) -> None:
                if not self._signed(b""):
                    return
                parts, query = self._route()
                with node._lock:
                    if len(parts) == 2:
                        gone = node.held.pop((parts[0], parts[1]), None)
                        if not gone:
                            self._send(404, _error("no such kb", "knowledge_base_not_found"))
                            return
                        self._send(200, {"deleted": True, "documents": len(gone)})
                        return
                    if len(parts) == 3 and parts[2] == "documents":
                        held = node.held.get((parts[0], parts[1]), {})
                        name = query.get("name", [""])[0]
                        if name not in held:
                            self._send(404, _error("no such document", "not_found"))
                            return
                        _, chunks = held.pop(name)
                        self._send(200, {"deleted": {"name": name, "chunks": chunks}})
                        return
                self._send(404, _error("not found", "not_found"))

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
