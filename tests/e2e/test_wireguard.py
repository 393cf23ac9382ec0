"""WireGuard ingress end to end, over real tunnels in network namespaces, driven by the
control plane.

Seven namespaces, all made (and removed) by the test:

    cli1 (peer 1) ─┐                            ┌─ back0 ── node: python -m data_plane serve
    cli2 (peer 2) ─┼─ wan (bridge) ── eth0 ─ gw ─┤  (backbone  (real model)
    intruder ──────┘   192.0.2.0/24             │  WireGuard)
                                                └─ mgmt0 ── mgmt: the control plane
                                                              (gunicorn, Celery worker and
                                                              beat, redis-server)

Between the gateway and the node runs the backbone: a second WireGuard network over
back0, keys and addresses provisioned through the control plane. The node's client API
listens on its backbone address only (and its firewall drops anything else to that
port); nginx proxies to that address only.

The control plane runs in the management namespace and is used only through its REST
API, as an operator would: clients and keys, the model pin, the node and its rollout,
the address pool, the gateway and its rollout, the peers. Its Celery worker pushes the
signed configs to the node and to the gateway agent; beat polls their health.

The gateway runs real wireguard-go (brought up by infra/scripts/wireguard-interface.sh),
real nginx and the agent (``python -m data_plane.gateway serve``), which applies the
signed gateway config and reloads iptables through infra/scripts/gateway-firewall.sh.
Each client brings its tunnel up with ``wg-quick`` and the exact file the control plane
returned when it provisioned the peer, then talks to the data plane with the ``openai``
SDK through the tunnel and nginx.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.keyring import KEYRING_DIR, Keyring
from shared.keys import load_public_key, write_key_pair
from shared.models import DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION, bundled_gguf_path
from shared.pki import (
    CLIENT,
    CONTROL_PLANE_NAME,
    MANAGEMENT_CA,
    CertificateAuthority,
    certificate_pem,
    client_context,
    generate_tls_key,
    write_tls_key,
)
from shared.signed_request import SignedRequestAuth, open_answer
from shared.trust import MANAGEMENT
from shared.wireguard import generate_key_pair
from tests.canary import files_containing, new_marker, texts_containing
from tests.conftest import wait_until
from tests.control_plane.processes import ControlPlane, Process
from tests.data_plane.engine_prompts import COUNTING
from tests.e2e.netns import Lab, Namespace, lab
from tests.e2e.world import (
    PARIS,
    WORLD_MARKS,
    Build,
    Peer,
    ask,
    cp_request,
    create_backbone_pool,
    ingress_serial,
    provision_peer,
    refused,
    require_tools,
    roll_out_gateways,
    roll_out_nodes,
    set_up_gateway,
    set_up_node,
    start_control_plane,
    tcp_exchange,
    tls_exchange,
    wg_up,
)

pytestmark = WORLD_MARKS

GATEWAY = "gw-e2e"
GW_PUBLIC = "192.0.2.1"
WG_PORT = 51820
TUNNEL_GW = "10.77.0.1"
NODE_UNDERLAY = "10.200.0.2"  # back0: what the backbone's WireGuard packets travel on
BACKBONE = "10.90.0.0/24"
NODE_BACKBONE = "10.90.0.2"  # the first member to join gets the pool's first free address
GW_BACKBONE = "10.90.0.3"
NODE_API = (NODE_BACKBONE, 8000)
NODE_MGMT = ("10.202.0.1", 8001)
AGENT = ("10.201.0.1", 8003)
NODE_METRICS = (NODE_MGMT[0], 9108)  # the scrape listeners, on the management side
AGENT_METRICS = (AGENT[0], 9109)
API_BASE = f"https://{TUNNEL_GW}/v1"  # TLS inside the tunnel, the ingress CA's


@dataclass
class World:
    lab: Lab
    tmp: Path
    gw: Namespace
    node: Namespace
    mgmt: Namespace
    intruder: Namespace
    gw_iface: str
    gateway_id: int
    cp: ControlPlane
    cp_url: str
    token: str
    cp_public_key: Path
    gw_signing: Path
    peers: list[Peer] = field(default_factory=list)
    processes: dict[str, Process] = field(default_factory=dict)
    before_firewall: bool | None = None  # the public port refused before any config
    gw_backbone_iface: str = ""
    node_backbone_iface: str = ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The control plane's REST API, called from the management namespace."""
        return cp_request(self.mgmt, self.cp_url, self.token, method, path, **kwargs)

    def roll_out_gateway(self) -> int:
        """Roll out through the API; wait until the worker's push has been applied."""
        return roll_out_gateways(self.api, {GATEWAY: self.gateway_id})

    def agent_health(self) -> dict[str, Any]:
        """The agent's health, asked as the control plane asks (a request signed by its
        management key for this gateway) and checked as it checks (the gateway's key)."""
        auth = SignedRequestAuth(self.cp_keyring().signer(MANAGEMENT), GATEWAY)

        def get() -> httpx.Response:
            with self.management_client() as client:
                return client.get(
                    f"https://{AGENT[0]}:{AGENT[1]}/internal/health",
                    auth=auth,
                    extensions={"sni_hostname": GATEWAY},  # its certificate names it
                )

        response = self.mgmt.run(get)
        assert response.status_code == 200, response.text
        return open_answer(
            response.content,
            load_public_key(self.gw_signing.with_suffix(".pub")),
            nonce=str(auth.jti),
            audience="control-plane",
        )

    def management_client(self, identity: bool = True) -> httpx.Client:
        """TLS to a management listener as the control plane: its client certificate (or
        none), the management CA."""
        ca_dir = self.tmp / "cp" / "keys" / "ca"
        ca = (ca_dir / "management" / "ca.crt").read_text()
        if not identity:
            return httpx.Client(verify=client_context(ca), timeout=30)
        context = client_context(ca, ca_dir / "control-plane.crt", ca_dir / "control-plane.key")
        return httpx.Client(verify=context, timeout=30)

    def cp_keyring(self) -> Keyring:
        """The control plane's keyring, beside the key set it published."""
        return Keyring(self.cp_public_key.parent / KEYRING_DIR)

    def outputs(self) -> dict[str, str]:
        texts = {name: "".join(p.output) for name, p in self.processes.items()}
        texts.update({f"cp {p.name}": "".join(p.output) for p in self.cp.processes})
        return texts


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tools()
    tmp = tmp_path_factory.mktemp("wg")
    scrape_token = tmp / "metrics.token"  # Prometheus's, for all three (0600)
    scrape_token.write_text(secrets.token_urlsafe(32))
    scrape_token.chmod(0o600)
    cp = ControlPlane(
        tmp / "cp",
        None,
        SANCTUM_CP_METRICS__TOKEN_FILE=str(scrape_token),
        SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="2",
        SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="2",
        # The world is built first and rolled out once, so the gateway can be seen before
        # and after its first config; the disabled peer's test rolls out by hand too.
        SANCTUM_CP_ROLLOUT__ON_CHANGE="false",
    )
    with lab() as the_lab:
        try:
            yield build_world(the_lab, tmp, cp)
        finally:
            cp.stop()


def build_world(the_lab: Lab, tmp: Path, cp: ControlPlane) -> World:
    processes: dict[str, Process] = {}

    # --- namespaces and links ----------------------------------------------------------
    wan = the_lab.namespace("wan")
    gw = the_lab.namespace("gw")
    node = the_lab.namespace("node")
    mgmt = the_lab.namespace("mgmt")
    cli1 = the_lab.namespace("cli1")
    cli2 = the_lab.namespace("cli2")
    intruder = the_lab.namespace("int")
    the_lab.bridge(wan)
    for ns, port, address in (
        (gw, "p-gw", f"{GW_PUBLIC}/24"),
        (cli1, "p-cli1", "192.0.2.11/24"),
        (cli2, "p-cli2", "192.0.2.12/24"),
        (intruder, "p-int", "192.0.2.66/24"),
    ):
        the_lab.plug(wan, "br0", port, ns, "eth0", address)
    the_lab.link(gw, "back0", node, "back0")
    gw.ip("address", "add", "10.200.0.1/30", "dev", "back0")
    node.ip("address", "add", f"{NODE_UNDERLAY}/30", "dev", "back0")
    the_lab.link(gw, "mgmt0", mgmt, "gw0")
    gw.ip("address", "add", f"{AGENT[0]}/30", "dev", "mgmt0")
    mgmt.ip("address", "add", "10.201.0.2/30", "dev", "gw0")
    the_lab.link(node, "mgmt0", mgmt, "node0")
    node.ip("address", "add", f"{NODE_MGMT[0]}/30", "dev", "mgmt0")
    mgmt.ip("address", "add", "10.202.0.2/30", "dev", "node0")
    # The management side can route to the tunnel network: a non-peer that reaches nginx.
    mgmt.ip("route", "add", "10.77.0.0/24", "via", AGENT[0])
    # ...and to the backbone network through the node: a host outside the backbone that
    # reaches the node's client API address.
    mgmt.ip("route", "add", BACKBONE, "via", NODE_MGMT[0])

    # --- the control plane, in the management namespace --------------------------------
    access = start_control_plane(cp, mgmt, processes, tmp)
    gw_signing = write_key_pair(tmp / "gateway-keys", "gateway")  # signs its health answers
    api = access.api

    # --- the compute node: registered, on the backbone, then the real data plane -------
    build = Build(access, the_lab, processes)
    create_backbone_pool(build, BACKBONE)
    node_site = set_up_node(
        build,
        node,
        name="node-1",
        home=tmp / "node",
        underlay=NODE_UNDERLAY,
        management=NODE_MGMT,
        api_port=NODE_API[1],
        SANCTUM_DP_METRICS__TOKEN_FILE=str(tmp / "metrics.token"),
        SANCTUM_DP_METRICS__HOST=NODE_METRICS[0],
        SANCTUM_DP_METRICS__PORT=str(NODE_METRICS[1]),
    )
    assert node_site.api == NODE_API

    world = World(
        lab=the_lab,
        tmp=tmp,
        gw=gw,
        node=node,
        mgmt=mgmt,
        intruder=intruder,
        gw_iface=the_lab.wg_name("gw"),
        gateway_id=0,
        cp=cp,
        cp_url=access.url,
        token=access.token,
        cp_public_key=access.public_key,
        gw_signing=gw_signing,
        processes=processes,
    )

    # --- clients, keys, the model and the node, through the REST API -------------------
    keys = {}
    for client in ("alice", "bob"):
        assert api("POST", "/clients/", json={"id": client, "name": client}).status_code == 201
        issued = api("POST", "/api-keys/", json={"client": client, "name": "e2e"})
        assert issued.status_code == 201, issued.text
        keys[client] = issued.json()["key"]
    pinned = api(
        "POST",
        "/model-pins/",
        json={
            "name": DEFAULT_MODEL_NAME,
            "version": DEFAULT_MODEL_VERSION,
            "path": str(bundled_gguf_path()),
            "clients": ["alice", "bob"],
        },
    )
    assert pinned.status_code == 201, pinned.text
    pin = pinned.json()["id"]
    assert wait_until(
        lambda: api("GET", f"/model-pins/{pin}/").json()["hash_status"] == "verified",
        timeout=180,
    )
    roll_out_nodes(api, {"node-1": node_site.id})

    # --- the gateway: boot provisioning, registration, enrolment, the agent, backbone --
    gateway = set_up_gateway(
        build,
        gw,
        name=GATEWAY,
        state=tmp / "gateway",
        signing_key=gw_signing,
        iface=world.gw_iface,
        public=(GW_PUBLIC, WG_PORT),
        pool={"name": "e2e-pool", "ipv4_cidr": "10.77.0.0/24", "ipv6_cidr": "fd77::/64"},
        agent=AGENT,
        upstreams=[{"node": "node-1", "host": NODE_API[0], "port": NODE_API[1]}],
        backbone_iface=the_lab.wg_name("gb"),
        SANCTUM_GW_METRICS__TOKEN_FILE=str(tmp / "metrics.token"),
        SANCTUM_GW_METRICS__HOST=AGENT_METRICS[0],
        SANCTUM_GW_METRICS__PORT=str(AGENT_METRICS[1]),
        SANCTUM_GW_METRICS__REFRESH_SECONDS="1",
    )
    world.gateway_id = gateway.id
    assert gateway.api_base == API_BASE
    assert gateway.backbone_address == GW_BACKBONE
    world.gw_backbone_iface = gateway.backbone_iface
    world.node_backbone_iface = node_site.backbone_iface
    # The node's next config lets the gateway in.
    roll_out_nodes(api, {"node-1": node_site.id}, timeout=120)

    # --- two peers: alice's key pair made by the control plane, bob brings his own ------
    bob_private, bob_public = generate_key_pair()
    for n, (ns, client, own) in enumerate(
        ((cli1, "alice", None), (cli2, "bob", (bob_private, bob_public))), 1
    ):
        peer = provision_peer(
            build,
            tmp,
            ns,
            client=client,
            gateway=GATEWAY,
            api_key=keys[client],
            api_base=API_BASE,
            iface_suffix=f"c{n}",
            own=own,
        )
        world.peers.append(peer)

    # Before any config the gateway has no firewall yet, and nginx listens on loopback
    # only: the public address refuses the connection (a reset, nothing more). After the
    # first config the same connection gets no answer at all.
    world.before_firewall = intruder.run(refused, (GW_PUBLIC, 80))
    world.roll_out_gateway()
    for peer in world.peers:
        wg_up(peer)
    return world


def test_client_gets_a_completion_through_the_tunnel_and_nginx(world: World) -> None:
    peer1, peer2 = world.peers
    assert "PrivateKey = " in peer1.conf.read_text()  # generated: shown once, in this file
    assert "\nPrivateKey" not in peer2.conf.read_text()  # its own key: never in the file
    # A later download holds no private key (it was never stored); otherwise the same.
    later = world.api("GET", f"/peers/{peer1.id}/config/").text
    assert "\nPrivateKey" not in later and later.endswith(peer1.config_text.split("Address")[1])
    assert world.api("GET", f"/peers/{peer2.id}/config/").text == peer2.config_text
    assert "Paris" in peer1.ns.run(ask, peer1)
    assert "Paris" in peer2.ns.run(ask, peer2)

    # Streaming (SSE) through nginx.
    def stream() -> str:
        chunks = peer1.openai().chat.completions.create(
            model=DEFAULT_MODEL_NAME,
            max_tokens=16,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": PARIS}],
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert "Paris" in peer1.ns.run(stream)


def test_client_content_leaves_no_trace_on_the_gateway(world: World) -> None:
    peer1 = world.peers[0]
    marker = new_marker()
    peer1.ns.run(ask, peer1, f"Repeat this code: {marker}", 8)
    assert files_containing(marker, [world.tmp / "gateway", world.tmp / "cp"]) == []
    assert texts_containing(marker, world.outputs()) == []


def test_intruder_gets_no_answer_at_all(world: World) -> None:
    # Before the firewall was loaded the public port refused (nginx is not bound there)...
    assert world.before_firewall is True
    # ...and now nothing comes back: not a RST (ConnectionRefusedError), a timeout.
    for port in (80, AGENT[1], 22, 443):
        with pytest.raises(TimeoutError):
            world.intruder.run(tcp_exchange, (GW_PUBLIC, port), b"GET / HTTP/1.0\r\n\r\n")
    # A client's public address is no better outside its tunnel.
    with pytest.raises(TimeoutError):
        world.peers[0].ns.run(tcp_exchange, (GW_PUBLIC, 80), b"GET / HTTP/1.0\r\n\r\n")
    rules = world.gw.sh("iptables", "-S", "SANCTUM-PUBLIC").stdout
    assert f"--dport {WG_PORT} -j ACCEPT" in rules and "-A SANCTUM-PUBLIC -j DROP" in rules


def test_non_peer_reaching_nginx_gets_444(world: World) -> None:
    # The management side routes to the tunnel address without a tunnel: nginx accepts
    # the connection and closes it without a byte.
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ca = world.peers[0].ca
    assert world.mgmt.run(tls_exchange, (TUNNEL_GW, 443), request, ca) == b""
    # The same request from a peer gets the data plane's answer (401: no key).
    from_peer = world.peers[0].ns.run(tls_exchange, (TUNNEL_GW, 443), request, ca)
    assert from_peer.startswith(b"HTTP/1.1 401")
    # Plain HTTP on the tunnel is off (an admin may turn it on for a gateway): nginx has
    # no listener there, and the firewall drops the port.
    with pytest.raises(TimeoutError):
        world.peers[0].ns.run(tcp_exchange, (TUNNEL_GW, 80), request)
    rendered = (world.tmp / "gateway" / "nginx" / "nginx.conf").read_text()
    assert f"listen {TUNNEL_GW}:443 ssl" in rendered and ":80 " not in rendered


def test_management_ports_need_the_control_planes_certificate(world: World) -> None:
    """Mutual TLS on both management listeners, on top of the signed requests: without
    the control plane's client certificate (none, or one from another CA) the handshake
    fails; with it, TLS passes and the unsigned request is refused (401)."""
    other = CertificateAuthority.open(world.tmp / "other-ca", MANAGEMENT_CA, create=True)
    key = generate_tls_key()
    forged = world.tmp / "forged.crt", world.tmp / "forged.key"
    cert = other.issue(
        key.public_key(), CONTROL_PLANE_NAME, usage=CLIENT, lifetime=timedelta(hours=1)
    )
    forged[0].write_text(certificate_pem(cert))
    write_tls_key(forged[1], key)
    ca = (world.tmp / "cp" / "keys" / "ca" / "management" / "ca.crt").read_text()
    targets = (
        (f"https://{NODE_MGMT[0]}:{NODE_MGMT[1]}/internal/health", "node-1"),
        (f"https://{AGENT[0]}:{AGENT[1]}/internal/health", GATEWAY),
    )
    for url, name in targets:
        for context in (client_context(ca), client_context(ca, *forged)):

            def call(context: ssl.SSLContext = context, url: str = url, name: str = name) -> None:
                with httpx.Client(verify=context, timeout=10) as client:
                    client.get(url, extensions={"sni_hostname": name})

            with pytest.raises(httpx.TransportError):
                world.mgmt.run(call)

        def with_identity(url: str = url, name: str = name) -> int:
            with world.management_client() as client:
                return client.get(url, extensions={"sni_hostname": name}).status_code

        assert world.mgmt.run(with_identity) == 401


def test_gateway_reports_each_peers_handshake(world: World) -> None:
    for peer in world.peers:
        peer.ns.run(peer.openai().models.list)
    health = world.agent_health()
    assert health["status"] == "ok", health
    handshakes = {p["id"]: p["latest_handshake"] for p in health["peers"]}
    assert set(handshakes) == {p.config_id for p in world.peers}
    assert all(isinstance(t, int) and t > 0 for t in handshakes.values()), handshakes
    assert health["interface"]["ifindex"] == world.gw.ifindex(world.gw_iface)

    # Beat polls the agent's health (a signed request) and records them on the peers.
    def recorded() -> bool:
        peers = world.api("GET", "/peers/").json()["results"]
        return all(p["last_handshake_at"] for p in peers) and len(peers) == 2

    assert wait_until(recorded, timeout=60), world.api("GET", "/peers/").json()
    state = world.api("GET", f"/gateways/{world.gateway_id}/").json()["state"]
    assert state["health_status"] == "ok" and state["applied_version"] == health["config_version"]


def test_disabling_a_peer_cuts_its_tunnel_and_only_its_tunnel(world: World) -> None:
    peer1, peer2 = world.peers
    assert "Paris" in peer1.ns.run(ask, peer1)
    ifindex = world.gw.ifindex(world.gw_iface)
    wg_pids = wireguard_go_pids(world.gw)
    assert wg_pids, "wireguard-go runs the gateway's interface"

    # Peer 2 keeps a long stream and a stream of small requests going across the rollout.
    chunks: list[float] = []
    calls: list[tuple[float, float, object]] = []
    stop = threading.Event()

    synced_at: list[float] = []

    def long_stream() -> str | None:
        # The model goes on counting, so the stream outlasts any rollout; the test
        # hangs up once enough of it has come through after the sync.
        stream = peer2.openai(timeout=300).completions.create(
            model=DEFAULT_MODEL_NAME,
            prompt=COUNTING,
            max_tokens=1000,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            chunks.append(time.monotonic())
            if chunk.choices and chunk.choices[0].finish_reason:
                return chunk.choices[0].finish_reason
            if synced_at and sum(t > synced_at[0] for t in chunks) >= 5:
                # Five events came through after the rollout: enough said, hang up (the
                # node ends the generation) rather than wait for all 1000 tokens.
                stream.close()
                return "still streaming"
        return None

    def keep_asking() -> None:
        # A new connection each time: every call crosses the tunnel afresh. (An idle
        # keep-alive connection is closed by nginx's reload, as on any nginx reload;
        # clients retry those, the openai SDK by default.)
        auth = {"Authorization": f"Bearer {peer2.api_key}"}
        while not stop.is_set():
            began = time.monotonic()
            try:
                with peer2.http(timeout=30) as http:
                    reply = http.get(f"{API_BASE}/models", headers=auth)
                outcome: object = reply.status_code
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            calls.append((began, time.monotonic(), outcome))
            time.sleep(0.2)

    streaming = peer2.ns.submit(long_stream)
    asking = peer2.ns.submit(keep_asking)
    assert wait_until(lambda: len(chunks) >= 3, timeout=120), "the stream did not start"

    # The operator disables peer 1 and rolls out; the worker pushes the new config. The
    # same release renews the gateway's certificates (as it does when they fall due):
    # a new ingress certificate for nginx and a new management one for the agent.
    renewed = world.cp.manage("tls", "renew", "gateway", GATEWAY)
    assert peer2.ns.run(ingress_serial, peer2) != renewed["SANCTUM_CP_RENEWED_INGRESS"]
    disabled = world.api("POST", f"/peers/{peer1.id}/disable/", json={"reason": "laptop lost"})
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    world.roll_out_gateway()
    synced = time.monotonic()
    synced_at.append(synced)

    # Within that one sync peer 1's tunnel is gone: nothing answers it any more.
    with pytest.raises(TimeoutError):
        peer1.ns.run(tcp_exchange, (TUNNEL_GW, 443), b"GET /v1/models HTTP/1.0\r\n\r\n", 3)
    with pytest.raises(httpx.TimeoutException):
        peer1.ns.run(peer1.http(timeout=3).get, f"{API_BASE}/models")

    # Peer 2 never noticed: its stream ran on through the rollout...
    assert streaming.result(timeout=300) in ("stop", "length", "still streaming")
    assert any(t > synced for t in chunks), "the stream ended before the rollout"
    stop.set()
    asking.result(timeout=60)
    failed = [(round(b - synced, 3), o) for b, _, o in calls if o != 200]
    assert calls and not failed, failed
    assert any(began > synced for began, _, _ in calls)
    assert "Paris" in peer2.ns.run(ask, peer2)
    # New handshakes get the renewed certificates: nginx's, and the agent's management one.
    assert peer2.ns.run(ingress_serial, peer2) == renewed["SANCTUM_CP_RENEWED_INGRESS"]
    management = world.agent_health()["management_certificate"]["serial"]
    assert management == renewed["SANCTUM_CP_RENEWED_MANAGEMENT"]
    # ...on the same interface, driven by the same wireguard-go: no restart.
    assert world.gw.ifindex(world.gw_iface) == ifindex
    assert wireguard_go_pids(world.gw) == wg_pids
    health = world.agent_health()
    assert [p["id"] for p in health["peers"]] == [peer2.config_id]
    assert health["interface"]["ifindex"] == ifindex
    # The reason is in the control plane's change trail, with who gave it.
    trail = world.api(
        "GET", "/changes/", params={"object_type": "peer", "changed_object_id": peer1.id}
    ).json()["results"]
    reasons = [(c["user_name"], (c["postchange_data"] or {}).get("disabled_reason")) for c in trail]
    assert ("ops", "laptop lost") in reasons


def test_nginx_reaches_the_node_over_the_backbone_only(world: World) -> None:
    peer = world.peers[1]
    assert "Paris" in peer.ns.run(ask, peer)
    # nginx proxies to the node's backbone address, never to its underlay one.
    rendered = (world.tmp / "gateway" / "nginx" / "nginx.conf").read_text()
    assert f"server {NODE_BACKBONE}:{NODE_API[1]}" in rendered
    assert NODE_UNDERLAY not in rendered
    # The backbone tunnel is up, both ends, with the peers the control plane gave them.
    gw_side = world.gw.sh("wg", "show", world.gw_backbone_iface, "dump").stdout.splitlines()
    node_side = world.node.sh("wg", "show", world.node_backbone_iface, "dump").stdout.splitlines()
    assert len(gw_side) == 2 and len(node_side) == 2, (gw_side, node_side)
    assert gw_side[1].split("\t")[3] == f"{NODE_BACKBONE}/32"
    assert node_side[1].split("\t")[3] == f"{GW_BACKBONE}/32"
    assert int(gw_side[1].split("\t")[4]) > 0, "no handshake on the backbone"
    # A host outside the backbone that can route to the node's API address gets nothing
    # at all (the node's firewall drops it), and the underlay address serves no API.
    for ns, address in ((world.mgmt, NODE_API), (world.gw, (NODE_UNDERLAY, NODE_API[1]))):
        with pytest.raises(TimeoutError):
            ns.run(tcp_exchange, address, b"GET /v1/models HTTP/1.0\r\n\r\n")
    # The backbone reaches the API port and nothing else on the node: a port where
    # nothing listens gets no reset back over the backbone, only silence.
    with pytest.raises(TimeoutError):
        world.gw.run(tcp_exchange, (NODE_BACKBONE, 22), b"SSH-2.0-probe\r\n")
    drops = world.node.sh("iptables", "-S", "SANCTUM-NODE").stdout
    iface = world.node_backbone_iface
    assert f"-A SANCTUM-NODE -i {iface} -p tcp -m tcp --dport {NODE_API[1]} -j RETURN" in drops


class Capture:
    """tcpdump on one interface of a namespace, whole packets, to a file. Immediate
    mode: each packet is written as it comes, so none is still held in the kernel's
    buffer when the capture stops (a short chat fits in one buffer timeout)."""

    def __init__(self, ns: Namespace, iface: str, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(
            ns.exec_argv(
                "tcpdump", "--immediate-mode", "-i", iface, "-s", "0", "-U", "-n", "-w", str(path)
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_started(self) -> None:
        assert self.process.stderr is not None
        line = self.process.stderr.readline().decode()
        assert "listening on" in line, line

    def stop(self) -> bytes:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        return self.path.read_bytes()


def test_no_link_carries_client_content(world: World) -> None:
    """A chat with a unique marker, captured on every link it crosses and on the
    management links: the marker is on none of them, nor on the client's tunnel inside
    the gateway (TLS there). As a control, the same capture on the node's backbone
    interface (where WireGuard has decrypted it, plain HTTP from nginx) does find it."""
    links = {
        "clients' network": (world.lab.namespace_named("wan"), "br0"),
        # Inside the gateway, where WireGuard has decrypted the client's packets: TLS.
        "client tunnel inside the gateway": (world.gw, world.gw_iface),
        "gateway to node (underlay)": (world.gw, "back0"),
        "management to gateway": (world.mgmt, "gw0"),
        "management to node": (world.mgmt, "node0"),
    }
    inside = {"node's backbone interface": (world.node, world.node_backbone_iface)}
    captures = {
        name: Capture(ns, iface, world.tmp / f"capture-{n}.pcap")
        for n, (name, (ns, iface)) in enumerate({**links, **inside}.items())
    }
    for capture in captures.values():
        capture.wait_started()
    peer = world.peers[1]
    marker = new_marker()
    peer.ns.run(ask, peer, f"Repeat this code: {marker}", 8)
    packets = {name: capture.stop() for name, capture in captures.items()}
    encoded = marker.encode()
    assert [name for name in links if encoded in packets[name]] == []
    assert all(encoded in packets[name] for name in inside), "the control found nothing"
    # The links did carry the chat, as WireGuard: enough bytes to have held it.
    assert (
        len(packets["clients' network"]) > 1000
        and len(packets["gateway to node (underlay)"]) > 1000
    )


def wireguard_go_pids(ns: Namespace) -> list[int]:
    pids = []
    for pid in ns.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                pids.append(pid)
        except OSError:
            continue
    return sorted(pids)


def test_prometheus_scrapes_the_node_the_gateway_and_the_control_plane(world: World) -> None:
    """A real Prometheus in the management namespace scrapes all three, each with the
    bearer token (the node's and the gateway's listeners over TLS with their management
    certificates); PromQL answers after a chat through the tunnel; a canary sent in that
    chat is in no scrape, and nowhere in Prometheus's storage."""
    peer = world.peers[1]  # peer 1 is disabled by an earlier test of this world
    marker = new_marker()
    peer.ns.run(ask, peer, f"Repeat this code: {marker}", 8)

    token = world.tmp / "metrics.token"
    ca = world.tmp / "cp" / "keys" / "ca" / "management" / "ca.crt"
    cp_base = world.cp_url.removesuffix("/api")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "node",
                "scheme": "https",
                "tls_config": {"ca_file": str(ca), "server_name": "node-1"},
                "authorization": {"credentials_file": str(token)},
                "static_configs": [{"targets": [f"{NODE_METRICS[0]}:{NODE_METRICS[1]}"]}],
            },
            {
                "job_name": "gateway",
                "scheme": "https",
                "tls_config": {"ca_file": str(ca), "server_name": GATEWAY},
                "authorization": {"credentials_file": str(token)},
                "static_configs": [{"targets": [f"{AGENT_METRICS[0]}:{AGENT_METRICS[1]}"]}],
            },
            {
                "job_name": "control-plane",
                "authorization": {"credentials_file": str(token)},
                "static_configs": [{"targets": [cp_base.removeprefix("http://")]}],
            },
        ],
    }
    home = world.tmp / "prometheus"
    home.mkdir()
    (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = 9090
    argv = [
        "prometheus",
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = Process("prometheus", world.mgmt.exec_argv(*argv), dict(os.environ))
    world.processes["prometheus"] = process
    try:
        process.wait_for("Server is ready to receive web requests", timeout=60)

        def query(promql: str) -> list[dict[str, Any]]:
            def get() -> httpx.Response:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql})

            answer = world.mgmt.run(get)
            assert answer.status_code == 200, answer.text
            return list(answer.json()["data"]["result"])

        def value(promql: str) -> float | None:
            found = query(promql)
            return float(found[0]["value"][1]) if found else None

        expected: dict[str, float | None] = {
            'sum(up{job=~"node|gateway|control-plane"})': 3,
            'sanctum_node_requests_total{route="/v1/chat/completions",status="200"} > 0': None,
            "sanctum_node_time_to_first_token_seconds_count > 0": None,
            f'sanctum_node_model_info{{model="{DEFAULT_MODEL_NAME}"}}': 1,
            "sanctum_gateway_peers": 1,  # peer 1 was disabled
            "sanctum_gateway_peers_connected": 1,
            'sanctum_gateway_nginx_responses_total{status="200"} > 0': None,
            'sanctum_cp_rollout_state{kind="node",target="node-1",state="in_sync"}': 1,
            f'sanctum_cp_rollout_state{{kind="gateway",target="{GATEWAY}",state="in_sync"}}': 1,
            'sanctum_cp_target_healthy{kind="node",target="node-1"}': 1,
        }

        def holds(promql: str, want: float | None) -> bool:
            got = value(promql)
            return got is not None and (want is None or got == want)

        for promql, want in expected.items():
            check = functools.partial(holds, promql, want)
            assert wait_until(check, timeout=60), (promql, query(promql))
        # Every series Prometheus holds from the three, and its storage: no canary.
        labels = query('{job=~"node|gateway|control-plane"}')
        assert texts_containing(marker, {"series": json.dumps(labels)}) == []
    finally:
        process.stop()
    assert files_containing(marker, [home]) == []
