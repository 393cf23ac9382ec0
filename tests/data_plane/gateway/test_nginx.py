"""The nginx template, rendered by the agent and run by real nginx on loopback.

Two small upstream servers stand in for data-plane nodes (they hold sessions and 404 an
unknown one, like a node does), so what is under test is nginx's own behaviour: 444 to
non-peers, session stickiness, streaming without buffering, bodies kept off the disk,
and an OpenAI-shaped error when no node answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from data_plane.gateway.nginx import Nginx, TemplateError, render
from shared.gateway import GatewayConfig, Upstream, WireGuardInterface, make_peer
from shared.pki import SERVER, CertificateAuthority, TlsMaterial, certificate_pem, ensure_tls_key
from shared.routing import new_session_id
from shared.wireguard import generate_key_pair, generate_preshared_key
from tests.conftest import free_port, release_fields
from tests.data_plane.gateway.conftest import NEEDS_NGINX, Kit

pytestmark = NEEDS_NGINX

BIG = 8_000_000  # a response far larger than socket buffers
PEER = "127.0.0.2"  # the peer's "tunnel address"; 127.0.0.1 is the gateway's own


class FakeNode(ThreadingHTTPServer):
    """A data-plane stand-in: makes sessions, knows only its own, streams on request."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.sessions: set[str] = set()
        self.release_stream = threading.Event()

        self.connections: set[socket.socket] = set()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, object]:
        conn, address = super().get_request()
        self.connections.add(conn)
        return conn, address

    def kill(self) -> None:
        """Gone as a killed process is: no listener, every connection cut."""
        self.shutdown()
        self.server_close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: FakeNode
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: dict, **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        node = self.server
        session = self.headers.get("X-Sanctum-Session")
        if session is None:
            session = new_session_id(node.name)
            node.sessions.add(session)
        elif session not in node.sessions:
            self._json(404, {"error": {"message": "no such session", "code": "not_found"}})
            return
        self._json(200, {"node": node.name, "received": length}, X_Sanctum_Session=session)

    def do_GET(self) -> None:
        if self.path == "/v1/big":
            data = b"y" * BIG
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in (b"data: first\n\n", b"data: second\n\n"):
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            self.wfile.flush()
            # The second event waits until the client has seen the first: a buffering
            # proxy would hold the first back and this would time out.
            self.server.release_stream.wait(timeout=20)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture
def nodes() -> Iterator[list[FakeNode]]:
    servers = [FakeNode("a"), FakeNode("b")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers
    for server in servers:
        server.release_stream.set()
        server.shutdown()
        server.server_close()


def gateway_config(
    upstreams: list[Upstream],
    port: int,
    *,
    plain_http: bool = True,
    https_port: int = 443,
    tls: TlsMaterial | None = None,
    pools: dict[str, str | None] | None = None,
) -> GatewayConfig:
    """A config with one peer per tunnel address of ``pools`` (address -> its pool;
    default: ``PEER`` in no pool, as configs were before pools)."""
    _, gw_public = generate_key_pair()
    return GatewayConfig.create(
        version=1,
        **release_fields(),
        gateway="gw-test",
        interface=WireGuardInterface(public_key=gw_public, addresses=("127.0.0.1/8",)),
        http_port=port,
        https_port=https_port,
        plain_http=plain_http,
        tls=tls,
        peers=[
            make_peer(
                id=f"peer-{n}",
                client=f"client-{n}",
                public_key=generate_key_pair()[1],
                addresses=(address,),
                enabled=True,
                preshared_key=generate_preshared_key(),
                gateway="gw-test",
                gateway_public_key=gw_public,
                pool=pool,
            )
            for n, (address, pool) in enumerate((pools or {PEER: None}).items(), 1)
        ],
        upstreams=upstreams,
    )


def start_nginx(kit: Kit, config: GatewayConfig) -> Nginx:
    nginx = Nginx(kit.settings())
    text = nginx.render(config)

    async def go() -> None:
        await nginx.check(text)
        await nginx.install(text)

    asyncio.run(go())
    return nginx


def peer_client(port: int, address: str = PEER) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30)


def raw_exchange(port: int, payload: bytes, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(payload)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def test_non_peers_get_444_even_for_garbage(kit: Kit, nodes: list[FakeNode]) -> None:
    upstreams = [Upstream(node=n.name, host="127.0.0.1", port=n.port) for n in nodes]
    start_nginx(kit, gateway_config(upstreams, kit.http_port))
    for payload in (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"garbage\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",  # a TLS hello
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    ):
        assert raw_exchange(kit.http_port, payload, "127.0.0.1") == b"", payload[:20]
    # The peer address gets an answer, and no banner gives the version away.
    answer = raw_exchange(
        kit.http_port, b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", PEER
    )
    assert answer.startswith(b"HTTP/1.1 200") and b"nginx/" not in answer


def test_sessions_stick_to_the_node_that_holds_them(kit: Kit, nodes: list[FakeNode]) -> None:
    upstreams = [Upstream(node=n.name, host="127.0.0.1", port=n.port) for n in nodes]
    start_nginx(kit, gateway_config(upstreams, kit.http_port))
    with peer_client(kit.http_port) as client:
        opened = []
        for _ in range(8):
            r = client.post("/v1/sessions", json={})
            assert r.status_code == 200
            opened.append((r.headers["X-Sanctum-Session"], r.json()["node"]))
        # New sessions are spread over both nodes...
        assert {node for _, node in opened} == {"a", "b"}
        # ...and every later call of a session lands on the node that holds it.
        for session, node in opened:
            for _ in range(3):
                r = client.post(
                    "/v1/chat/completions", json={}, headers={"X-Sanctum-Session": session}
                )
                assert r.status_code == 200, (session, r.text)
                assert r.json()["node"] == node
        # A session nobody holds gets the node's own 404, not nginx's page.
        r = client.post("/v1/chat/completions", json={}, headers={"X-Sanctum-Session": "sess_x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


OTHER_PEER = "127.0.0.3"  # a peer of another client, on another pool


@pytest.fixture
def three_nodes(nodes: list[FakeNode]) -> Iterator[list[FakeNode]]:
    """Nodes a and b (pool "shared") and c (pool "dedicated")."""
    c = FakeNode("c")
    threading.Thread(target=c.serve_forever, daemon=True).start()
    yield [*nodes, c]
    c.release_stream.set()
    c.shutdown()
    c.server_close()


def pooled(nodes: list[FakeNode], draining: frozenset[str] = frozenset()) -> list[Upstream]:
    return [
        Upstream(
            node=n.name,
            host="127.0.0.1",
            port=n.port,
            pool="dedicated" if n.name == "c" else "shared",
            draining=n.name in draining,
        )
        for n in nodes
    ]


def open_sessions(client: httpx.Client, count: int) -> list[tuple[str, str]]:
    """``count`` new sessions: (id, the node that holds it)."""
    opened = []
    for _ in range(count):
        r = client.post("/v1/sessions", json={})
        assert r.status_code == 200, r.text
        opened.append((r.headers["X-Sanctum-Session"], r.json()["node"]))
    return opened


def test_each_peer_reaches_only_its_pools_nodes(kit: Kit, three_nodes: list[FakeNode]) -> None:
    config = gateway_config(
        pooled(three_nodes), kit.http_port, pools={PEER: "shared", OTHER_PEER: "dedicated"}
    )
    start_nginx(kit, config)
    with peer_client(kit.http_port) as shared, peer_client(kit.http_port, OTHER_PEER) as solo:
        spread = open_sessions(shared, 6)
        assert {node for _, node in spread} == {"a", "b"}  # spread, and never c
        alone = open_sessions(solo, 4)
        assert {node for _, node in alone} == {"c"}
        # A session continues on its node...
        for session, node in spread + alone:
            client = solo if node == "c" else shared
            r = client.post("/v1/chat/completions", json={}, headers={"X-Sanctum-Session": session})
            assert r.status_code == 200 and r.json()["node"] == node
        # ...and naming another pool's session leads nowhere near that pool's node: the
        # route map knows c only for c's pool, so the call goes to the peer's own pool.
        r = shared.post("/v1/chat/completions", json={}, headers={"X-Sanctum-Session": alone[0][0]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert len(three_nodes[2].sessions) == 4


def test_a_draining_node_keeps_its_sessions_and_gets_no_new_ones(
    kit: Kit, nodes: list[FakeNode]
) -> None:
    nginx = start_nginx(kit, gateway_config(pooled(nodes), kit.http_port, pools={PEER: "shared"}))
    with peer_client(kit.http_port) as client:
        held = [(s, n) for s, n in open_sessions(client, 4) if n == "a"]
        assert held
        drained = gateway_config(
            pooled(nodes, draining=frozenset({"a"})), kit.http_port, pools={PEER: "shared"}
        )
        asyncio.run(nginx.install(nginx.render(drained)))
        time.sleep(0.5)  # the old workers stop accepting
        assert {node for _, node in open_sessions(client, 4)} == {"b"}
        for session, _ in held:
            r = client.post("/v1/chat/completions", json={}, headers={"X-Sanctum-Session": session})
            assert r.status_code == 200 and r.json()["node"] == "a"


def test_a_dead_nodes_sessions_get_404_and_new_calls_go_to_the_live_one(
    kit: Kit, nodes: list[FakeNode]
) -> None:
    start_nginx(kit, gateway_config(pooled(nodes), kit.http_port, pools={PEER: "shared"}))
    a = nodes[0]
    with peer_client(kit.http_port) as client:
        lost = [s for s, n in open_sessions(client, 4) if n == "a"]
        assert lost
        a.kill()
        # No one-shot call fails: the first to meet the dead node is passed to b.
        for _ in range(6):
            r = client.post("/v1/chat/completions", json={})
            assert r.status_code == 200 and r.json()["node"] == "b"
        for session in lost:
            r = client.post("/v1/chat/completions", json={}, headers={"X-Sanctum-Session": session})
            assert r.status_code == 404, r.text
            error = r.json()["error"]
            assert error["code"] == "not_found" and "node that held it is gone" in error["message"]


def test_events_stream_through_unbuffered(kit: Kit, nodes: list[FakeNode]) -> None:
    node = nodes[0]
    start_nginx(
        kit, gateway_config([Upstream(node="a", host="127.0.0.1", port=node.port)], kit.http_port)
    )
    with peer_client(kit.http_port) as client, client.stream("GET", "/v1/stream") as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line) == "data: first"
        node.release_stream.set()
        assert next(line for line in lines if line) == "data: second"


def test_client_content_never_goes_to_a_temp_file(kit: Kit, nodes: list[FakeNode]) -> None:
    node = nodes[0]
    nginx = start_nginx(
        kit, gateway_config([Upstream(node="a", host="127.0.0.1", port=node.port)], kit.http_port)
    )
    body = b"x" * (1_900_000)  # just under the 2m limit, far over nginx's default buffer
    with peer_client(kit.http_port) as client:
        r = client.post("/v1/chat/completions", content=body)
        assert r.status_code == 200 and r.json()["received"] == len(body)
        # A client that reads slowly: a buffering proxy would spill the response to disk.
        with client.stream("GET", "/v1/big") as slow:
            time.sleep(1)
            assert len(slow.read()) == BIG
        too_big = client.post("/v1/chat/completions", content=b"x" * 3_000_000)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "payload_too_large"
    error_log = (nginx.paths.log_dir / "error.log").read_text()
    assert "buffered to a temporary file" not in error_log
    assert not any(Path(nginx.paths.temp_dir).rglob("*[0-9]"))
    access_log = (nginx.paths.log_dir / "access.log").read_text()
    assert "xxxx" not in access_log and PEER in access_log


def test_no_node_answering_gives_an_openai_shaped_503(kit: Kit) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    start_nginx(
        kit, gateway_config([Upstream(node="a", host="127.0.0.1", port=dead_port)], kit.http_port)
    )
    with peer_client(kit.http_port) as client:
        r = client.post("/v1/chat/completions", json={})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "upstream_unavailable"


def test_template_placeholders_must_match_exactly(kit: Kit) -> None:
    nginx = Nginx(kit.settings())
    with pytest.raises(TemplateError, match="unknown"):
        render("@@PID_FILE@@ @@SURPRISE@@", None, nginx.paths)
    with pytest.raises(TemplateError, match="missing"):
        render("@@PID_FILE@@", None, nginx.paths)


# --- TLS inside the tunnel ---------------------------------------------------------------


def _ingress(kit: Kit, ca: CertificateAuthority) -> tuple[TlsMaterial, int]:
    """An ingress certificate for the gateway's key (made as at enrolment); its serial."""
    key = ensure_tls_key(kit.state / "tls" / "ingress.key")
    cert = ca.issue(
        key.public_key(),
        "gw-test",
        usage=SERVER,
        lifetime=dt.timedelta(days=1),
        ip_addresses=["127.0.0.1"],
    )
    material = TlsMaterial(
        ca=ca.certificate_pem,
        ingress_ca=ca.certificate_pem,
        ingress_certificate=certificate_pem(cert),
    )
    return material, cert.serial_number


def _peer_tls(port: int, ca_pem: str) -> httpx.Client:
    context = ssl.create_default_context(cadata=ca_pem)
    transport = httpx.HTTPTransport(local_address=PEER, verify=context)
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", transport=transport, timeout=30)


def _served_serial(port: int, ca_pem: str) -> int:
    context = ssl.create_default_context(cadata=ca_pem)
    with (
        socket.create_connection(("127.0.0.1", port), source_address=(PEER, 0)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _await_serial(port: int, ca_pem: str, serial: int) -> int:
    """The serial new handshakes get, once the old workers (which finish their
    connections) have stopped accepting: a graceful reload takes a moment."""
    deadline = time.monotonic() + 10
    while (seen := _served_serial(port, ca_pem)) != serial and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_nginx_serves_tls_with_the_issued_certificate_and_renews_it_with_a_stream_in_flight(
    kit: Kit, nodes: list[FakeNode], tmp_path: Path
) -> None:
    ca = CertificateAuthority.open(tmp_path / "ingress-ca", "ingress", create=True)
    other = CertificateAuthority.open(tmp_path / "other-ca", "other", create=True)
    https_port = free_port()
    upstreams = [Upstream(node=n.name, host="127.0.0.1", port=n.port) for n in nodes]
    material, serial = _ingress(kit, ca)
    config = gateway_config(
        upstreams, kit.http_port, plain_http=False, https_port=https_port, tls=material
    )
    nginx = start_nginx(kit, config)

    # The client verifies with the ingress CA it was given, for the tunnel address.
    with _peer_tls(https_port, ca.certificate_pem) as client:
        answer = client.post("/v1/chat/completions", json={"x": 1})
    assert answer.status_code == 200 and answer.json()["node"] in {"a", "b"}
    assert _served_serial(https_port, ca.certificate_pem) == serial
    # Another CA's clients can't be fooled, and plain HTTP is off on the tunnel.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _peer_tls(https_port, other.certificate_pem).get("/v1/models")
    with pytest.raises(httpx.ConnectError):
        peer_client(kit.http_port).get("/v1/models")

    # Renewal: a stream is in flight when the new certificate's config is installed.
    with (
        _peer_tls(https_port, ca.certificate_pem) as streaming,
        streaming.stream("GET", "/v1/stream") as stream,
    ):
        lines = stream.iter_lines()
        assert next(line for line in lines if line) == "data: first"
        renewed, new_serial = _ingress(kit, ca)
        text = nginx.render(config.model_copy(update={"tls": renewed}))
        asyncio.run(nginx.install(text))
        assert _await_serial(https_port, ca.certificate_pem, new_serial) == new_serial != serial
        for node in nodes:
            node.release_stream.set()
        assert next(line for line in lines if line) == "data: second"
