"""A stand-in for a data-plane node's management listener, for unit tests of rollout
and of usage collection.

It follows the contract the real node implements: every management call must be a
request signed by a trusted management key for this node (401 ``invalid_signature``);
``PUT /internal/config`` verifies the JWS against the trusted config keys (401
``bad_signature``), parses the bundle (400), refuses a version not above the one held
(409 ``stale_version`` with ``current_version``), and ``GET /internal/health`` reports
the held version, signed with the fake's node key for that request. It can be
stopped and started again on the same port (a node going down and coming back), or told
to refuse with a given error (a node that can't load a model).

Usage records (docs/audit.md, section 1): ``GET /internal/usage?after=&limit=`` and
``POST /internal/usage/ack`` take requests signed by the control plane's key (401
``invalid_signature`` otherwise), list unacknowledged records after a cursor in pages,
and acknowledge by cursor (never past the last record) and by record id. Records are
signed with the fake's own node key (:meth:`add_usage`), or any key a test chooses.
The end-to-end and fault tests use the real data plane instead.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from shared.attestation import make_statement, open_statement, sign_statement
from shared.config import open_bundle
from shared.envelope import EnvelopeError
from shared.keys import generate_private_key, public_pem
from shared.signed_request import (
    ReplayGuard,
    SignedRequestError,
    SignedRequestVerifier,
    sign_answer,
)
from shared.trust import CONFIG, MANAGEMENT, KeySet
from shared.usage import (
    UsageAck,
    UsageRecord,
    format_timestamp,
    new_record_id,
    sign_usage_record,
)


def _error(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeNode:
    def __init__(self, name: str, trust: KeySet) -> None:
        self.name = name
        self.trust = trust
        self.held_version: int | None = None
        self.received: list[int] = []  # versions of every bundle that reached it
        self.refuse_with: tuple[int, dict[str, Any]] | None = None
        # (method, path, signed) of each config push and health read.
        self.management_calls: list[tuple[str, str, bool]] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        # usage records
        self.node_key = generate_private_key()
        self.verifier = SignedRequestVerifier(
            lambda: trust.public_keys(MANAGEMENT), name, ReplayGuard()
        )
        self.outbox: dict[int, tuple[str, str]] = {}  # cursor -> (record id, jws)
        self.acked: set[int] = set()
        self.last_cursor = 0
        self.ack_failures = 0  # answer this many acks with 503 (a crash before the ack)
        self.usage_requests = 0
        self.placements: dict[str, dict[str, Any]] = {}  # record id -> placement, from acks
        self.tree_head: str | None = None  # the largest tree head an ack handed over
        # Node statements (shared.attestation): off by default, so the ledger indexes
        # of the tests written before statements stay as they were.
        self.statements = False
        self.config_version = 1  # what the statement claims; change it for new claims
        self.placed_statements: list[dict[str, Any]] = []  # what the control plane posted

    def statement(self, nonce: str) -> str:
        """The statement this node answers for ``nonce`` (its claims: fixed but for the
        config version)."""
        said = make_statement(
            node_id=self.name,
            nonce=nonce,
            release_digest="ab" * 32,
            llama_cpp={"version": "0.3.36", "library_sha256": "cd" * 32},
            models=[{"name": "smollm2", "version": "q4_1", "sha256": "ef" * 32}],
            config={"version": self.config_version, "sha256": "01" * 32},
            engine_settings_sha256="23" * 32,
            signing_key=self.node_key.public_key(),
            management_tls_sha256=None,
        )
        return sign_statement(said, self.node_key)

    @property
    def node_public_pem(self) -> str:
        return public_pem(self.node_key.public_key()).decode()

    def add_usage(
        self, client_id: str = "acme", key: Ed25519PrivateKey | None = None, **fields: Any
    ) -> tuple[UsageRecord, str]:
        """Sign a record (with the node's key, or ``key``) and put it in the outbox."""
        ended = fields.pop("ended_at", datetime.now(UTC))
        record = UsageRecord(
            record_id=fields.pop("record_id", new_record_id()),
            session_id=fields.pop("session_id", f"sess_{new_record_id().replace('-', '')}"),
            client_id=client_id,
            node_id=fields.pop("node_id", self.name),
            model=fields.pop("model", "smollm2-135m-instruct"),
            model_version=fields.pop("model_version", "q4_1"),
            model_sha256=fields.pop("model_sha256", "ab" * 32),
            started_at=format_timestamp(fields.pop("started_at", ended - timedelta(seconds=5))),
            ended_at=format_timestamp(ended),
            ended_by=fields.pop("ended_by", "teardown"),
            request_count=fields.pop("request_count", 1),
            prompt_tokens=fields.pop("prompt_tokens", 12),
            completion_tokens=fields.pop("completion_tokens", 1),
            **fields,
        )
        token = sign_usage_record(record, key or self.node_key)
        self.add_signed(record.record_id, token)
        return record, token

    def add_signed(self, record_id: str, token: str) -> int:
        with self._lock:
            self.last_cursor += 1
            self.outbox[self.last_cursor] = (record_id, token)
            return self.last_cursor

    @property
    def pending(self) -> list[int]:
        with self._lock:
            return sorted(c for c in self.outbox if c not in self.acked)

    def forget(self, cursors: set[int]) -> None:
        """Drop records (past the receipt retention), placements and all."""
        with self._lock:
            for cursor in cursors:
                record_id, _ = self.outbox.pop(cursor)
                self.placements.pop(record_id, None)
                self.acked.discard(cursor)

    @property
    def tree_size(self) -> int:
        return int(self.tree_head.split("\n")[1]) if self.tree_head else -1

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

            def _signed(self, body: bytes = b"") -> bool:
                try:
                    node.verifier.verify(
                        self.headers.get("Authorization"), self.command, self.path, body
                    )
                except SignedRequestError as exc:
                    self._send(401, _error(str(exc), "invalid_signature", "authentication_error"))
                    return False
                return True

            def _note_call(self, body: bytes = b"") -> dict[str, Any] | None:
                """The request's claims, or None after answering 401."""
                try:
                    claims = node.verifier.verify(
                        self.headers.get("Authorization"), self.command, self.path, body
                    )
                except SignedRequestError as exc:
                    node.management_calls.append((self.command, self.path, False))
                    self._send(401, _error(str(exc), "invalid_signature", "authentication_error"))
                    return None
                node.management_calls.append((self.command, self.path, True))
                return claims

            def _send_signed(self, document: dict[str, Any], nonce: str) -> None:
                token = sign_answer(
                    document, node.node_key, nonce=nonce, audience="control-plane"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jose")
                self.send_header("Content-Length", str(len(token)))
                self.end_headers()
                self.wfile.write(token)

            def _statement(self) -> None:
                if not self._signed():
                    return
                query = parse_qs(urlsplit(self.path).query)
                token = node.statement(query.get("nonce", [""])[0]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jose")
                self.send_header("Content-Length", str(len(token)))
                self.end_headers()
                self.wfile.write(token)

            def do_GET(self) -> None:
                if node.statements and urlsplit(self.path).path == "/internal/attestation":
                    self._statement()
                    return
                if node.statements and self.path == "/internal/attestation/placed":
                    if not self._signed():
                        return
                    with node._lock:
                        placed = list(node.placed_statements)
                    data = json.dumps(placed).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if urlsplit(self.path).path == "/internal/usage":
                    self._usage()
                    return
                if urlsplit(self.path).path == "/internal/usage/placed":
                    self._placed()
                    return
                if self.path != "/internal/health":
                    self._send(404, _error("not found", "not_found"))
                    return
                claims = self._note_call()
                if claims is None:
                    return
                self._send_signed(
                    {
                        "status": "ok",
                        "node": node.name,
                        "config_version": node.held_version,
                        "models": [],
                        "sessions_open": 0,
                        "usage": {
                            "pending": len(node.pending),
                            "last_cursor": node.last_cursor,
                            "acked_through": 0,
                        },
                    },
                    claims["jti"],
                )

            def _usage(self) -> None:
                if not self._signed():
                    return
                node.usage_requests += 1
                query = parse_qs(urlsplit(self.path).query)
                after = int(query.get("after", ["0"])[0])
                limit = int(query.get("limit", ["100"])[0])
                waiting = [c for c in node.pending if c > after]
                page = waiting[:limit]
                with node._lock:
                    records = [
                        {"cursor": c, "record_id": node.outbox[c][0], "jws": node.outbox[c][1]}
                        for c in page
                    ]
                self._send(
                    200,
                    {
                        "node_id": node.name,
                        "records": records,
                        "next": page[-1] if page else after,
                        "more": len(waiting) > len(page),
                        "tree_head": node.tree_head,
                    },
                )

            def _placed(self) -> None:
                if not self._signed():
                    return
                query = parse_qs(urlsplit(self.path).query)
                start = int(query.get("from_index", ["0"])[0])
                limit = int(query.get("limit", ["100"])[0])
                with node._lock:
                    by_id = {rid: (c, jws) for c, (rid, jws) in node.outbox.items()}
                    found = sorted(
                        (p["log_index"], rid)
                        for rid, p in node.placements.items()
                        if p["log_index"] >= start and rid in by_id
                    )
                    page = found[:limit]
                    records = [
                        {
                            "cursor": by_id[rid][0],
                            "jws": by_id[rid][1],
                            "placement": node.placements[rid],
                        }
                        for _, rid in page
                    ]
                self._send(
                    200,
                    {
                        "node_id": node.name,
                        "records": records,
                        "next": page[-1][0] + 1 if page else start,
                        "more": len(found) > limit,
                        "tree_head": node.tree_head,
                    },
                )

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if node.statements and self.path == "/internal/attestation/placed":
                    if not self._signed(body):
                        return
                    placed = json.loads(body)
                    with node._lock:
                        node.placed_statements = [
                            p
                            for p in node.placed_statements
                            if p["placement"]["log_index"] != placed["log_index"]
                        ]
                        node.placed_statements.append(
                            {
                                "claims_sha256": open_statement(placed["jws"]).claims_sha256(),
                                "jws": placed["jws"],
                                "placement": {
                                    "record_id": "statement",
                                    "log_index": placed["log_index"],
                                    "logged_at": placed["logged_at"],
                                    "leaf_hash": placed["leaf_hash"],
                                },
                            }
                        )
                    self._send(200, {"ok": True})
                    return
                if self.path != "/internal/usage/ack":
                    self._send(404, _error("not found", "not_found"))
                    return
                if not self._signed(body):
                    return
                if node.ack_failures:
                    node.ack_failures -= 1
                    self._send(503, _error("disk full", "unavailable", "server_error"))
                    return
                try:
                    ack = UsageAck.model_validate_json(body)
                except ValidationError:
                    self._send(422, _error("bad ack", "invalid_ack"))
                    return
                with node._lock:
                    if ack.cursor is not None:
                        node.acked |= {c for c in node.outbox if c <= ack.cursor}
                    ids = set(ack.record_ids)
                    node.acked |= {c for c, (rid, _) in node.outbox.items() if rid in ids}
                    held = {rid for rid, _ in node.outbox.values()}
                    for placement in ack.placements:
                        if placement.record_id in held:
                            node.placements[placement.record_id] = placement.model_dump()
                    if ack.tree_head is not None and (
                        int(ack.tree_head.split("\n")[1]) > node.tree_size
                    ):
                        node.tree_head = ack.tree_head
                    pending = len([c for c in node.outbox if c not in node.acked])
                self._send(200, {"acked_through": 0, "pending": pending, "unknown_ids": 0})

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/internal/config":
                    self._send(404, _error("not found", "not_found"))
                    return
                if self._note_call(body) is None:
                    return
                try:
                    bundle = open_bundle(body, node.trust.public_keys(CONFIG))
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
