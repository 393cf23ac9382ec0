"""Fixtures for the network app: gateways with their WireGuard keys, a fake gateway agent.

The fake agent follows the contract the real one (``python -m data_plane.gateway``)
implements: every call must be a request signed by a trusted management key for this
gateway (401); ``PUT /internal/config`` verifies the JWS against the trusted config keys
(401), parses the config (400), checks the gateway name (409 ``wrong_target``), refuses
a version not above the held one (409 ``stale_version`` with ``current_version``), opens
each sealed PSK with the gateway's WireGuard key; ``GET /internal/health`` reports
per-peer handshakes, signed with the agent's own key for that request. The real agent is proven in
tests/data_plane/gateway and end to end in tests/e2e/test_wireguard.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from control_plane.core.signing import target_trust
from control_plane.network.models import AddressPool, Gateway
from shared.envelope import EnvelopeError
from shared.gateway import GatewayConfig, open_gateway_config, open_preshared_key
from shared.keys import generate_private_key, public_pem
from shared.signed_request import (
    ReplayGuard,
    SignedRequestError,
    SignedRequestVerifier,
    sign_answer,
)
from shared.trust import CONFIG, MANAGEMENT, KeySet
from shared.wireguard import generate_key_pair


@dataclass
class GatewayKeys:
    gateway: Gateway
    private_key: str  # the gateway's WireGuard private key (it never leaves a real one)
    signing_key: Ed25519PrivateKey  # signs its health answers


def make_gateway(
    name: str = "gw-1",
    ipv4: str = "10.77.0.0/24",
    ipv6: str = "fd77::/64",
    management_url: str = "http://127.0.0.1:9",
) -> GatewayKeys:
    private, public = generate_key_pair()
    signing = generate_private_key()
    pool = AddressPool.objects.create(name=f"{name}-pool", ipv4_cidr=ipv4, ipv6_cidr=ipv6)
    gateway = Gateway.objects.create(
        name=name,
        public_endpoint=f"{name}.example.net:51820",
        public_key=public,
        management_url=management_url,
        signing_key=public_pem(signing.public_key()).decode(),
        pool=pool,
    )
    return GatewayKeys(gateway, private, signing)


@pytest.fixture
def gateway(db) -> GatewayKeys:
    return make_gateway()


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@dataclass
class FakeAgent:
    name: str
    wg_private_key: str
    trust: KeySet
    signing_key: Ed25519PrivateKey
    held: GatewayConfig | None = None
    psks: dict[str, str] = field(default_factory=dict)
    handshakes: dict[str, int] = field(default_factory=dict)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAgent:
        agent = self
        verifier = SignedRequestVerifier(
            lambda: self.trust.public_keys(MANAGEMENT), self.name, ReplayGuard()
        )

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

            def _verify(self, body: bytes) -> dict[str, Any] | None:
                try:
                    return verifier.verify(
                        self.headers.get("Authorization"), self.command, self.path, body
                    )
                except SignedRequestError as exc:
                    self._send(401, _error(str(exc), "invalid_signature"))
                    return None

            def do_GET(self) -> None:
                claims = self._verify(b"")
                if claims is None:
                    return
                held = agent.held
                peers = [
                    {"id": p.id, "latest_handshake": agent.handshakes.get(p.id)}
                    for p in (held.enabled_peers() if held else [])
                ]
                version = held.version if held else None
                token = sign_answer(
                    {"status": "ok", "config_version": version, "peers": peers, "problems": []},
                    agent.signing_key,
                    nonce=claims["jti"],
                    audience="control-plane",
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jose")
                self.send_header("Content-Length", str(len(token)))
                self.end_headers()
                self.wfile.write(token)

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self._verify(body) is None:
                    return
                try:
                    config = open_gateway_config(body, agent.trust.public_keys(CONFIG))
                except EnvelopeError as exc:
                    self._send(401, _error(str(exc), "bad_signature"))
                    return
                except ValidationError:
                    self._send(400, _error("malformed", "invalid_config"))
                    return
                if config.gateway != agent.name:
                    self._send(409, _error("other gateway", "wrong_target"))
                    return
                if agent.held is not None and config.version <= agent.held.version:
                    body_409 = _error("stale", "stale_version")
                    body_409["current_version"] = agent.held.version
                    self._send(409, body_409)
                    return
                agent.psks = {
                    p.public_key: open_preshared_key(
                        p.preshared_key,
                        gateway=config.gateway,
                        gateway_private_key=agent.wg_private_key,
                        peer_public_key=p.public_key,
                    )
                    for p in config.enabled_peers()
                    if p.preshared_key
                }
                agent.held = config
                self._send(200, {"version": config.version, "applied": True})

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def fake_agent_factory(db) -> Iterator[Callable[..., tuple[FakeAgent, GatewayKeys]]]:
    started: list[FakeAgent] = []

    def make(name: str = "gw-1", **kwargs: Any) -> tuple[FakeAgent, GatewayKeys]:
        keys = make_gateway(name, **kwargs)
        agent = FakeAgent(name, keys.private_key, target_trust(), keys.signing_key).start()
        started.append(agent)
        keys.gateway.management_url = agent.url
        keys.gateway.save()
        return agent, keys

    yield make
    for agent in started:
        agent.stop()
