"""A stand-in for a data-plane node's management listener, for unit tests of rollout.

It follows the contract the real node implements: ``PUT /internal/config`` verifies the
JWS against the control plane's public key (401 ``bad_signature``), parses the bundle
(400), refuses a version not above the one held (409 ``stale_version`` with
``current_version``), and ``GET /internal/health`` reports the held version. It can be
stopped and started again on the same port (a node going down and coming back), or told
to refuse with a given error (a node that can't load a model). The end-to-end tests use
the real data plane instead.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from shared.config import open_bundle
from shared.envelope import EnvelopeError


def _error(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeNode:
    def __init__(self, name: str, trusted: Ed25519PublicKey) -> None:
        self.name = name
        self.trusted = trusted
        self.held_version: int | None = None
        self.received: list[int] = []  # versions of every bundle that reached it
        self.refuse_with: tuple[int, dict[str, Any]] | None = None
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeNode:
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

            def do_GET(self) -> None:
                if self.path != "/internal/health":
                    self._send(404, _error("not found", "not_found"))
                    return
                self._send(
                    200,
                    {
                        "status": "ok",
                        "node": node.name,
                        "config_version": node.held_version,
                        "models": [],
                        "sessions_open": 0,
                    },
                )

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/internal/config":
                    self._send(404, _error("not found", "not_found"))
                    return
                try:
                    bundle = open_bundle(body, node.trusted)
                except EnvelopeError as exc:
                    self._send(401, _error(str(exc), "bad_signature", "authentication_error"))
                    return
                except ValidationError:
                    self._send(400, _error("malformed bundle", "invalid_bundle"))
                    return
                with node._lock:
                    node.received.append(bundle.version)
                    if node.refuse_with is not None:
                        self._send(*node.refuse_with)
                        return
                    if node.held_version is not None and bundle.version <= node.held_version:
                        body_409 = _error("stale", "stale_version")
                        body_409["current_version"] = node.held_version
                        self._send(409, body_409)
                        return
                    node.held_version = bundle.version
                    node.last_bundle = bundle
                self._send(200, {"version": bundle.version, "applied": True})

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
