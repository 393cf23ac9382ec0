"""WireGuard ingress end to end, over real tunnels in network namespaces.

Seven namespaces, all made (and removed) by the test:

    cli1 (peer 1) ─┐                          ┌─ back0 ── node: python -m data_plane serve
    cli2 (peer 2) ─┼─ wan (bridge) ── eth0 ─ gw ┤            (real model, pushed config)
    intruder ──────┘   192.0.2.0/24           └─ mgmt0 ── mgmt ── node's management
                                                            (the control plane's side)

The gateway runs real wireguard-go (brought up by infra/scripts/gateway-wireguard.sh),
real nginx and the agent (``python -m data_plane.gateway serve``), which applies the
signed gateway config and reloads iptables through infra/scripts/gateway-firewall.sh.
Each client brings its tunnel up with ``wg-quick`` and the exact file the control plane's
function renders, then talks to the data plane with the ``openai`` SDK through the tunnel
and nginx.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from shared.config import ConfigBundle, ModelSpec, sign_bundle
from shared.gateway import (
    GatewayConfig,
    Upstream,
    WireGuardInterface,
    make_peer,
    sign_gateway_config,
)
from shared.keys import CONTROL_PLANE, NODE, ensure_key_pair
from shared.models import DEFAULT_MODEL_NAME
from shared.signed_request import SignedRequestAuth
from shared.wireguard import (
    format_endpoint,
    generate_key_pair,
    generate_preshared_key,
    render_client_config,
)
from tests.canary import files_containing, new_marker, texts_containing
from tests.conftest import REPO, Tenant, child_env, make_tenant
from tests.e2e.netns import Lab, Namespace, lab, wait_for

TOOLS = ("ip", "wg", "wg-quick", "wireguard-go", "nginx", "iptables-restore")

pytestmark = [
    pytest.mark.e2e_wireguard,
    pytest.mark.e2e,
    pytest.mark.model,
    # Skipped only off CI and not root. In CI (root, tools installed by make) it runs.
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root (namespaces)"
    ),
]

GATEWAY = "gw-e2e"
GW_PUBLIC = "192.0.2.1"
WG_PORT = 51820
TUNNEL_GW = "10.77.0.1"
TUNNEL_NET = "10.77.0.1/24"
NODE_API = ("10.200.0.2", 8000)
NODE_MGMT = ("10.202.0.1", 8001)
AGENT = ("10.201.0.1", 8003)
API_BASE = f"http://{TUNNEL_GW}/v1"
PARIS = "What is the capital city of France? Answer in one sentence."
USERSPACE = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


@dataclass
class Peer:
    """A client's peer: its namespace, keys, the config file it brings the tunnel up with."""

    id: str
    ns: Namespace
    iface: str
    address: str
    tenant: Tenant
    public_key: str
    psk: str
    private_key: str
    own_key: bool  # brought its own key pair: the file holds no private key
    conf: Path = Path()
    config_text: str = ""

    def openai(self, timeout: float = 120) -> OpenAI:
        return OpenAI(base_url=API_BASE, api_key=self.tenant.key, max_retries=0, timeout=timeout)


@dataclass
class World:
    lab: Lab
    tmp: Path
    gw: Namespace
    node: Namespace
    mgmt: Namespace
    wan: Namespace
    intruder: Namespace
    gw_iface: str
    gw_wg_public: str
    cp_key: Any
    peers: list[Peer]
    outputs: dict[str, list[str]] = field(default_factory=dict)
    version: int = 0
    before_firewall: bytes | None = None

    def gateway_config(self, disabled: tuple[str, ...] = ()) -> GatewayConfig:
        """What the control plane would build for this gateway (version goes up)."""
        self.version += 1
        return GatewayConfig.create(
            version=self.version,
            issued_at=datetime.now(UTC),
            gateway=GATEWAY,
            interface=WireGuardInterface(
                name=self.gw_iface,
                public_key=self.gw_wg_public,
                listen_port=WG_PORT,
                addresses=(TUNNEL_NET,),
            ),
            peers=[
                make_peer(
                    id=p.id,
                    client=p.tenant.id,
                    public_key=p.public_key,
                    addresses=(p.address,),
                    enabled=p.id not in disabled,
                    preshared_key=p.psk,
                    gateway=GATEWAY,
                    gateway_public_key=self.gw_wg_public,
                )
                for p in self.peers
            ],
            upstreams=[Upstream(node="node-1", host=NODE_API[0], port=NODE_API[1])],
        )

    def push_gateway(self, config: GatewayConfig) -> httpx.Response:
        token = sign_gateway_config(config, self.cp_key)
        return self.mgmt.run(
            httpx.put,
            f"http://{AGENT[0]}:{AGENT[1]}/internal/config",
            content=token,
            headers={"Content-Type": "application/jose"},
            timeout=60,
        )

    def health(self) -> dict[str, Any]:
        def get() -> httpx.Response:
            return httpx.get(
                f"http://{AGENT[0]}:{AGENT[1]}/internal/health",
                auth=SignedRequestAuth(self.cp_key),
                timeout=30,
            )

        response = self.mgmt.run(get)
        assert response.status_code == 200, response.text
        return dict(response.json())


def start(
    ns: Namespace,
    name: str,
    argv: list[str],
    env: dict[str, str],
    ready: str,
    outputs: dict[str, list[str]],
    timeout: float,
) -> str:
    """Start ``argv`` in ``ns``; return the first output line starting with ``ready``."""
    proc = subprocess.Popen(
        ns.exec_argv(*argv),
        cwd=REPO,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = outputs.setdefault(name, [])
    found: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(ready) and not found:
                found.append(line.strip())
                seen.set()
        seen.set()

    threading.Thread(target=pump, daemon=True).start()
    if not seen.wait(timeout) or not found:
        raise AssertionError(f"{name} did not start:\n" + "".join(lines[-40:]))
    return found[0]


def tcp_exchange(address: tuple[str, int], payload: bytes, timeout: float = 3) -> bytes:
    """Connect, send, read to EOF. Raises TimeoutError when nothing answers at all."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def wg_up(peer: Peer) -> None:
    """Bring the peer's tunnel up from its config file, as a client would."""
    peer.ns.sh("wg-quick", "up", str(peer.conf), env={**os.environ, **USERSPACE})
    if peer.own_key:
        # The file has no private key (it never left the client): the client adds it.
        key_file = peer.conf.with_suffix(".key")
        key_file.write_text(peer.private_key + "\n")
        key_file.chmod(0o600)
        peer.ns.sh("wg", "set", peer.iface, "private-key", str(key_file))


def ask(peer: Peer, prompt: str = PARIS, max_tokens: int = 16) -> str:
    reply = peer.openai().chat.completions.create(
        model=DEFAULT_MODEL_NAME,
        max_tokens=max_tokens,
        temperature=0,
        messages=[{"role": "user", "content": prompt}],
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, model_spec: ModelSpec) -> Iterator[World]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"install {missing} (make setup-system)"
    tmp = tmp_path_factory.mktemp("wg")
    with lab() as the_lab:
        yield build_world(the_lab, tmp, model_spec)


def build_world(the_lab: Lab, tmp: Path, model_spec: ModelSpec) -> World:
    keys = tmp / "keys"
    cp_key = ensure_key_pair(keys, CONTROL_PLANE)
    ensure_key_pair(keys, NODE)
    outputs: dict[str, list[str]] = {}

    # --- namespaces and links ----------------------------------------------------------
    wan = the_lab.namespace("wan")
    gw = the_lab.namespace("gw")
    node = the_lab.namespace("node")
    mgmt = the_lab.namespace("mgmt")
    cli1 = the_lab.namespace("cli1")
    cli2 = the_lab.namespace("cli2")
    intruder = the_lab.namespace("int")
    wan.ip("link", "add", "br0", "type", "bridge")
    wan.ip("link", "set", "br0", "up")
    for ns, port, address in (
        (gw, "p-gw", f"{GW_PUBLIC}/24"),
        (cli1, "p-cli1", "192.0.2.11/24"),
        (cli2, "p-cli2", "192.0.2.12/24"),
        (intruder, "p-int", "192.0.2.66/24"),
    ):
        the_lab.link(wan, port, ns, "eth0")
        wan.ip("link", "set", port, "master", "br0")
        ns.ip("address", "add", address, "dev", "eth0")
    the_lab.link(gw, "back0", node, "back0")
    gw.ip("address", "add", "10.200.0.1/30", "dev", "back0")
    node.ip("address", "add", f"{NODE_API[0]}/30", "dev", "back0")
    the_lab.link(gw, "mgmt0", mgmt, "gw0")
    gw.ip("address", "add", f"{AGENT[0]}/30", "dev", "mgmt0")
    mgmt.ip("address", "add", "10.201.0.2/30", "dev", "gw0")
    the_lab.link(node, "mgmt0", mgmt, "node0")
    node.ip("address", "add", f"{NODE_MGMT[0]}/30", "dev", "mgmt0")
    mgmt.ip("address", "add", "10.202.0.2/30", "dev", "node0")
    # The management side can route to the tunnel network: a non-peer that reaches nginx.
    mgmt.ip("route", "add", "10.77.0.0/24", "via", AGENT[0])

    # --- the compute node: the real data plane with the real model --------------------
    alice = make_tenant("alice", (DEFAULT_MODEL_NAME,))
    bob = make_tenant("bob", (DEFAULT_MODEL_NAME,))
    start(
        node,
        "node",
        [sys.executable, "-m", "data_plane", "serve"],
        {
            "SANCTUM_DP_DATA_DIR": str(tmp / "node"),
            "SANCTUM_DP_NODE_ID": "node-1",
            "SANCTUM_DP_CONTROL_PLANE_PUBLIC_KEY": str(keys / f"{CONTROL_PLANE}.pub"),
            "SANCTUM_DP_NODE_PRIVATE_KEY": str(keys / f"{NODE}.key"),
            "SANCTUM_DP_LISTEN__API_HOST": NODE_API[0],
            "SANCTUM_DP_LISTEN__API_PORT": str(NODE_API[1]),
            "SANCTUM_DP_LISTEN__MANAGEMENT_HOST": NODE_MGMT[0],
            "SANCTUM_DP_LISTEN__MANAGEMENT_PORT": str(NODE_MGMT[1]),
        },
        "SANCTUM_DP_READY",
        outputs,
        timeout=180,
    )
    bundle = ConfigBundle(
        version=1,
        issued_at=datetime.now(UTC),
        node="node-1",
        models=(model_spec,),
        clients=(alice.spec, bob.spec),
    )
    pushed = mgmt.run(
        httpx.put,
        f"http://{NODE_MGMT[0]}:{NODE_MGMT[1]}/internal/config",
        content=sign_bundle(bundle, cp_key),
        headers={"Content-Type": "application/jose"},
        timeout=300,
    )
    assert pushed.status_code == 200, pushed.text

    # --- the gateway: interface at boot, then the agent (which starts nginx) -----------
    gw_state = tmp / "gateway"
    gw_state.mkdir()
    gw_private, gw_public = generate_key_pair()
    gw_key = gw_state / "wireguard.key"
    gw_key.write_text(gw_private + "\n")
    gw_key.chmod(0o600)
    gw_iface = the_lab.wg_name("gw")
    gw.sh(
        str(REPO / "infra/scripts/gateway-wireguard.sh"),
        "up",
        env={
            **os.environ,
            "SANCTUM_GW_WG_INTERFACE": gw_iface,
            "SANCTUM_GW_WG_PORT": str(WG_PORT),
            "SANCTUM_GW_WIREGUARD__PRIVATE_KEY": str(gw_key),
            "SANCTUM_GW_WG_ADDRESSES": TUNNEL_NET,
        },
    )
    start(
        gw,
        "agent",
        [sys.executable, "-m", "data_plane.gateway", "serve"],
        {
            "SANCTUM_GW_NAME": GATEWAY,
            "SANCTUM_GW_STATE_DIR": str(gw_state),
            "SANCTUM_GW_CONTROL_PLANE_PUBLIC_KEY": str(keys / f"{CONTROL_PLANE}.pub"),
            "SANCTUM_GW_WIREGUARD__PRIVATE_KEY": str(gw_key),
            "SANCTUM_GW_LISTEN__HOST": AGENT[0],
            "SANCTUM_GW_LISTEN__PORT": str(AGENT[1]),
            "SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE": "eth0",
        },
        "SANCTUM_GW_READY",
        outputs,
        timeout=60,
    )

    # --- two clients: one with a generated key pair, one that brought its own ----------
    peers = []
    for n, (ns, tenant, own_key) in enumerate(((cli1, alice, False), (cli2, bob, True)), 1):
        private, public = generate_key_pair()
        peers.append(
            Peer(
                id=f"peer-{n}",
                ns=ns,
                iface=the_lab.wg_name(f"c{n}"),
                address=f"10.77.0.{n + 1}",
                tenant=tenant,
                public_key=public,
                psk=generate_preshared_key(),
                private_key=private,
                own_key=own_key,
            )
        )
    world = World(
        lab=the_lab,
        tmp=tmp,
        gw=gw,
        node=node,
        mgmt=mgmt,
        wan=wan,
        intruder=intruder,
        gw_iface=gw_iface,
        gw_wg_public=gw_public,
        cp_key=cp_key,
        peers=peers,
        outputs=outputs,
    )
    # Before any config the gateway has no firewall yet: nginx takes the connection and
    # closes it (444). After the first config the same connection gets no answer at all.
    world.before_firewall = intruder.run(
        tcp_exchange, (GW_PUBLIC, 80), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    response = world.push_gateway(world.gateway_config())
    assert response.status_code == 200, response.text
    for peer in peers:
        # The file the control plane will serve for download, byte for byte.
        peer.config_text = render_client_config(
            addresses=[peer.address],
            private_key=None if peer.own_key else peer.private_key,
            gateway_public_key=gw_public,
            preshared_key=peer.psk,
            endpoint=format_endpoint(GW_PUBLIC, WG_PORT),
            allowed_ips=[TUNNEL_GW],
            description=f"Sanctum {GATEWAY} / {peer.tenant.id} / {peer.id}",
        )
        peer.conf = tmp / f"{peer.iface}.conf"
        peer.conf.write_text(peer.config_text)
        peer.conf.chmod(0o600)
        wg_up(peer)
    return world


# --- the tests ---------------------------------------------------------------------------


def test_client_gets_a_completion_through_the_tunnel_and_nginx(world: World) -> None:
    peer1, peer2 = world.peers
    assert "PrivateKey = " in peer1.conf.read_text()
    assert "\nPrivateKey" not in peer2.conf.read_text()  # its own key: never in the file
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
    found = files_containing(marker, [world.tmp / "gateway"])
    assert found == []
    assert texts_containing(marker, {k: "".join(v) for k, v in world.outputs.items()}) == []


def test_intruder_gets_no_answer_at_all(world: World) -> None:
    # The same connection got an answer before the firewall was loaded...
    assert world.before_firewall == b""
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
    answer = world.mgmt.run(
        tcp_exchange, (TUNNEL_GW, 80), b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 10
    )
    assert answer == b""
    # The same request from a peer gets the data plane's answer (401: no key).
    from_peer = world.peers[0].ns.run(
        tcp_exchange,
        (TUNNEL_GW, 80),
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        10,
    )
    assert from_peer.startswith(b"HTTP/1.1 401")


def test_gateway_reports_each_peers_handshake(world: World) -> None:
    for peer in world.peers:
        peer.ns.run(peer.openai().models.list)
    health = world.health()
    assert health["status"] == "ok", health
    assert health["config_version"] == world.version
    handshakes = {p["id"]: p["latest_handshake"] for p in health["peers"]}
    assert set(handshakes) == {"peer-1", "peer-2"}
    assert all(isinstance(t, int) and t > 0 for t in handshakes.values()), handshakes
    assert health["interface"]["ifindex"] == world.gw.ifindex(world.gw_iface)


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
        stream = peer2.openai(timeout=300).chat.completions.create(
            model=DEFAULT_MODEL_NAME,
            max_tokens=400,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        )
        for chunk in stream:
            chunks.append(time.monotonic())
            if chunk.choices and chunk.choices[0].finish_reason:
                return chunk.choices[0].finish_reason
            if synced_at and sum(t > synced_at[0] for t in chunks) >= 5:
                # Five events came through after the rollout: enough said, hang up (the
                # node ends the generation) rather than wait for all 400 tokens.
                stream.close()
                return "still streaming"
        return None

    def keep_asking() -> None:
        # A new connection each time: every call crosses the tunnel afresh. (An idle
        # keep-alive connection is closed by nginx's reload, as on any nginx reload;
        # clients retry those, the openai SDK by default.)
        auth = {"Authorization": f"Bearer {peer2.tenant.key}"}
        while not stop.is_set():
            began = time.monotonic()
            try:
                reply = httpx.get(f"{API_BASE}/models", headers=auth, timeout=30)
                outcome: object = reply.status_code
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            calls.append((began, time.monotonic(), outcome))
            time.sleep(0.2)

    streaming = peer2.ns.submit(long_stream)
    asking = peer2.ns.submit(keep_asking)
    assert wait_for(lambda: len(chunks) >= 3, timeout=120), "the stream did not start"

    response = world.push_gateway(world.gateway_config(disabled=("peer-1",)))
    synced = time.monotonic()
    synced_at.append(synced)
    assert response.status_code == 200, response.text

    # Within that one sync peer 1's tunnel is gone: nothing answers it any more.
    with pytest.raises(TimeoutError):
        peer1.ns.run(tcp_exchange, (TUNNEL_GW, 80), b"GET /v1/models HTTP/1.0\r\n\r\n", 3)
    with pytest.raises(httpx.TimeoutException):
        peer1.ns.run(httpx.get, f"{API_BASE}/models", timeout=httpx.Timeout(3))

    # Peer 2 never noticed: its stream ran on through the rollout...
    assert streaming.result(timeout=300) in ("stop", "length", "still streaming")
    assert any(t > synced for t in chunks), "the stream ended before the rollout"
    stop.set()
    asking.result(timeout=60)
    failed = [(round(b - synced, 3), o) for b, _, o in calls if o != 200]
    assert calls and not failed, failed
    assert any(began > synced for began, _, _ in calls)
    assert "Paris" in peer2.ns.run(ask, peer2)
    # ...on the same interface, driven by the same wireguard-go: no restart.
    assert world.gw.ifindex(world.gw_iface) == ifindex
    assert wireguard_go_pids(world.gw) == wg_pids
    health = world.health()
    assert [p["id"] for p in health["peers"]] == ["peer-2"]
    assert health["interface"]["ifindex"] == ifindex


def wireguard_go_pids(ns: Namespace) -> list[int]:
    pids = []
    for pid in ns.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                pids.append(pid)
        except OSError:
            continue
    return sorted(pids)
