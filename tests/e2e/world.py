"""Building blocks of the end-to-end worlds in network namespaces, driven by the control
plane's REST API as an operator drives it.

Each world (``test_wireguard``: one gateway and one node; ``test_placement``: two
gateways and three nodes) wires its own namespaces and calls these in order:

1. ``start_control_plane``: redis-server, gunicorn, a Celery worker and beat in the
   management namespace, with an operator's API token and the published key set.
2. ``set_up_node`` for each node: registered, on the backbone (its WireGuard interface
   and firewall up), enrolled for management TLS, then the real data plane.
3. ``set_up_gateway`` for each gateway: its clients' WireGuard interface, its address
   pool, registered with its upstreams, enrolled (management and ingress TLS), the
   agent started, on the backbone.
4. ``provision_peer`` for each client's peer: the file the control plane returned, the
   ingress CA that came with it; ``wg_up`` brings the tunnel up from that file.

A gateway can be seen before its first config, so nothing here rolls anything out
implicitly: ``roll_out_nodes`` and ``roll_out_gateways`` ask for a release through the
API and wait until the worker's push has been applied.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from openai import DefaultHttpxClient, OpenAI

from shared.keys import NODE, write_key_pair
from shared.models import DEFAULT_MODEL_NAME
from shared.wireguard import generate_key_pair
from tests.conftest import REPO, free_port, wait_until
from tests.control_plane.processes import ControlPlane, Process
from tests.e2e.netns import Lab, Namespace

# The marks of a test module that builds a world: skipped only off CI and not root. In
# CI (root, tools installed by make) it runs.
WORLD_MARKS = [
    pytest.mark.e2e_wireguard,
    pytest.mark.e2e,
    pytest.mark.model,
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root (namespaces)"
    ),
]
TOOLS = (
    "ip",
    "wg",
    "wg-quick",
    "wireguard-go",
    "nginx",
    "iptables-restore",
    "redis-server",
    "prometheus",
)
PARIS = "What is the capital city of France? Answer in one sentence."
USERSPACE = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
BACKBONE_PORT = 51821


def require_tools() -> None:
    """Every tool the worlds run is installed (make setup-system installs them)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"install {missing} (make setup-system)"


@dataclass
class Peer:
    """A client's peer: its namespace and the config file the control plane returned."""

    id: int  # the control plane's peer id (``peer-<id>`` in the gateway config)
    ns: Namespace
    iface: str
    api_key: str
    own_private_key: str | None  # set when the client brought its own key pair
    conf: Path
    config_text: str
    ca: Path  # the ingress CA, from the provisioning answer
    api_base: str  # the gateway's, inside the tunnel: https://<tunnel address>/v1

    @property
    def config_id(self) -> str:
        return f"peer-{self.id}"

    @property
    def gateway_address(self) -> str:
        """The gateway's tunnel address, where nginx answers this peer."""
        host = httpx.URL(self.api_base).host
        assert host, self.api_base
        return host

    def tls(self) -> ssl.SSLContext:
        """Trust for the gateway's TLS: the ingress CA that came with the download."""
        return ssl.create_default_context(cafile=self.ca)

    def http(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(verify=self.tls(), timeout=timeout)

    def openai(self, timeout: float = 120) -> OpenAI:
        return OpenAI(
            base_url=self.api_base,
            api_key=self.api_key,
            max_retries=0,
            timeout=timeout,
            http_client=DefaultHttpxClient(verify=self.tls(), timeout=timeout),
        )


def cp_request(
    mgmt: Namespace, cp_url: str, token: str, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """The control plane's REST API, called from the management namespace."""
    return mgmt.run(
        httpx.request,
        method,
        f"{cp_url}{path}",
        headers={"Authorization": f"Token {token}"},
        timeout=120,
        **kwargs,
    )


Api = Callable[..., httpx.Response]  # ``api(method, path, **httpx_kwargs)``


def start(
    world_processes: dict[str, Process],
    ns: Namespace,
    name: str,
    argv: list[str],
    env: dict[str, str],
    ready: str,
    timeout: float,
) -> str:
    """Start ``argv`` in ``ns``; return the output line that says it is ready."""
    process = Process(name, ns.exec_argv(*argv), env)
    world_processes[name] = process
    return process.wait_for(ready, timeout=timeout).strip()


@dataclass
class ControlPlaneAccess:
    """Where the control plane answers (from the management namespace) and what an
    operator and the targets hold of it: the API token and the published key set."""

    mgmt: Namespace
    url: str  # .../api
    token: str
    public_key: Path  # the key set nodes and gateways trust

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return cp_request(self.mgmt, self.url, self.token, method, path, **kwargs)


def start_control_plane(
    cp: ControlPlane, mgmt: Namespace, processes: dict[str, Process], tmp: Path
) -> ControlPlaneAccess:
    """Migrate, make an admin with a token, publish the keys; then redis-server,
    gunicorn, a Celery worker and beat, all in the management namespace."""
    redis_port = free_port()
    cp.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    cp.manage("migrate", "-v0")
    token = cp.manage("create_operator", "ops", "--role", "admin", "--token")["SANCTUM_API_TOKEN"]
    cp_public_key = Path(cp.manage("keys")["SANCTUM_CP_TRUST_KEYS"])  # the published key set
    redis = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
    ready_line = "Ready to accept connections"
    start(processes, mgmt, "redis-server", redis, dict(os.environ), ready_line, timeout=30)
    serve = ["serve", "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "2"]
    manage = [sys.executable, "-m", "control_plane"]
    ready = start(processes, mgmt, "gunicorn", [*manage, *serve], cp.env, "SANCTUM_CP_READY", 90)
    cp_url = dict(p.split("=", 1) for p in ready.split()[1:])["api"].rstrip("/")
    worker = [*manage, "worker", "--concurrency", "1"]
    start(processes, mgmt, "celery worker", worker, cp.env, " ready.", timeout=90)
    start(processes, mgmt, "celery beat", [*manage, "beat"], cp.env, "beat: Starting", 90)
    return ControlPlaneAccess(mgmt, cp_url, token, cp_public_key)


@dataclass
class Build:
    """What each step of building a world uses: the control plane (as an operator), the
    lab (namespaces, WireGuard interface names) and the world's processes, by name."""

    access: ControlPlaneAccess
    lab: Lab
    processes: dict[str, Process]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.access.api(method, path, **kwargs)

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; it must be created (201). Returns the answer."""
        made = self.api("POST", path, json=dict(body))
        assert made.status_code == 201, made.text
        return dict(made.json())


def create_backbone_pool(build: Build, cidr: str) -> None:
    """The backbone's address pool, named ``backbone``: nodes and gateways join it."""
    build.create("/address-pools/", {"name": "backbone", "purpose": "backbone", "ipv4_cidr": cidr})


def enrol(
    mgmt: Namespace,
    cp_api: Callable[..., httpx.Response],
    cp_url: str,
    kind: str,
    name: str,
    directory: Path,
) -> None:
    """An admin makes a one-time token; ``sanctum enrol`` makes the keys and sends CSRs.

    The CLI runs in the management namespace only because the test's control plane
    listens on loopback there; it writes into the target's own directory (one file
    system), and no private key crosses the API.
    """
    made = cp_api("POST", "/enrolment-tokens/", json={"kind": kind, "target_name": name})
    assert made.status_code == 201, made.text
    result = mgmt.sh(
        sys.executable,
        "-m",
        "shared.cli",
        "enrol",
        kind,
        "--url",
        cp_url.removesuffix("/api"),
        "--name",
        name,
        "--dir",
        str(directory),
        env={**os.environ, "PYTHONPATH": str(REPO), "SANCTUM_ENROL_TOKEN": made.json()["token"]},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (directory / "management.key").stat().st_mode & 0o077 == 0


def make_wireguard_key(path: Path) -> str:
    """What ``wg genkey > path`` does on the machine; returns the public key."""
    private, public = generate_key_pair()
    path.write_text(private + "\n")
    path.chmod(0o600)
    return public


def interface_up(ns: Namespace, iface: str, port: int, key: Path, address: str) -> None:
    """A backbone interface at boot: the same script, with the backbone's settings."""
    ns.sh(
        str(REPO / "infra/scripts/wireguard-interface.sh"),
        "up",
        env={
            **os.environ,
            "SANCTUM_WG_INTERFACE": iface,
            "SANCTUM_WG_PORT": str(port),
            "SANCTUM_WG_PRIVATE_KEY": str(key),
            "SANCTUM_WG_ADDRESSES": address,
        },
    )


def process_env() -> dict[str, str]:
    """The environment of a node or an agent: this checkout, offline, no Sanctum settings
    of the test run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANCTUM_", "DJANGO_"))}
    env.update(
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


@dataclass
class NodeSite:
    """A data-plane node as the test set it up: its namespace and what it was given."""

    id: int  # the control plane's node id
    name: str
    ns: Namespace
    home: Path  # its data dir
    backbone_iface: str
    backbone_address: str
    api: tuple[str, int]  # the client API, on the backbone address
    env: dict[str, str]


def set_up_node(
    build: Build,
    ns: Namespace,
    *,
    name: str,
    home: Path,
    underlay: str,
    management: tuple[str, int],
    api_port: int,
    register: Mapping[str, Any] | None = None,
    **env: str,
) -> NodeSite:
    """Register ``name``, join it to the backbone pool named ``backbone`` (its interface
    and firewall up as at boot), enrol it, and start ``python -m data_plane serve``.

    ``underlay`` is where the backbone's WireGuard packets reach the node; ``register``
    adds fields to POST /api/nodes/; ``env`` adds to the node's environment.
    """
    access = build.access
    node_key = write_key_pair(home / "keys", NODE)
    registered = build.create(
        "/nodes/",
        {
            "name": name,
            "management_url": f"https://{management[0]}:{management[1]}",
            "public_key": node_key.with_suffix(".pub").read_text(),
            **(register or {}),
        },
    )
    bb_key = home / "backbone.key"
    bb_iface = build.lab.wg_name(f"n{name[-1]}")
    joined = build.create(
        "/backbone-members/",
        {
            "pool": "backbone",
            "node": name,
            "public_key": make_wireguard_key(bb_key),
            "endpoint": f"{underlay}:{BACKBONE_PORT}",
            "interface_name": bb_iface,
        },
    )
    address = joined["address"]
    interface_up(ns, bb_iface, BACKBONE_PORT, bb_key, f"{address}/24")
    firewall = {"SANCTUM_DP_LISTEN__API_PORT": str(api_port), "SANCTUM_NODE_BACKBONE_IF": bb_iface}
    ns.sh(str(REPO / "infra/scripts/node-firewall.sh"), "apply", env={**os.environ, **firewall})
    enrol(access.mgmt, access.api, access.url, "node", name, home / "tls")
    node_env = process_env()
    node_env.update(
        SANCTUM_DP_DATA_DIR=str(home),
        SANCTUM_DP_NODE_ID=name,
        SANCTUM_DP_TRUST_KEYS=str(access.public_key),
        SANCTUM_DP_NODE_PRIVATE_KEY=str(node_key),
        SANCTUM_DP_LISTEN__API_HOST=address,
        SANCTUM_DP_LISTEN__API_PORT=str(api_port),
        SANCTUM_DP_LISTEN__MANAGEMENT_HOST=management[0],
        SANCTUM_DP_LISTEN__MANAGEMENT_PORT=str(management[1]),
        SANCTUM_DP_BACKBONE__PRIVATE_KEY=str(bb_key),
        **env,
    )
    site = NodeSite(
        registered["id"], name, ns, home, bb_iface, address, (address, api_port), node_env
    )
    start_node(build.processes, site)
    return site


def start_node(processes: dict[str, Process], node: NodeSite) -> Process:
    """``python -m data_plane serve`` in the node's namespace, with its environment; its
    process is ``processes[node.name]``."""
    argv = [sys.executable, "-m", "data_plane", "serve"]
    start(processes, node.ns, node.name, argv, node.env, "SANCTUM_DP_READY", timeout=180)
    return processes[node.name]


@dataclass
class GatewaySite:
    """A gateway as the test set it up: its namespace, interfaces and registration."""

    id: int
    name: str
    ns: Namespace
    state: Path  # the agent's state dir (nginx's rendered config, TLS, WireGuard key)
    iface: str  # the clients' WireGuard interface
    backbone_iface: str
    backbone_address: str
    api_base: str
    signing_key: Path  # signs its health answers


def set_up_gateway(
    build: Build,
    ns: Namespace,
    *,
    name: str,
    state: Path,
    signing_key: Path,
    iface: str,
    public: tuple[str, int],
    pool: Mapping[str, str],
    agent: tuple[str, int],
    upstreams: list[dict[str, Any]],
    backbone_iface: str,
    **env: str,
) -> GatewaySite:
    """A gateway from boot provisioning to the backbone: its clients' interface (the
    pool's first address, as the agent would set it), its address pool, registration
    with ``upstreams``, enrolment, the agent, and its backbone interface. Nothing is
    rolled out: the agent holds no config yet. ``env`` adds to the agent's environment."""
    access = build.access
    state.mkdir()
    tunnel_network = ipaddress.ip_network(pool["ipv4_cidr"])
    tunnel = next(tunnel_network.hosts())
    gw_key = state / "wireguard.key"
    gw_public = make_wireguard_key(gw_key)  # what gateway-provision.sh's `wg genkey` does
    ns.sh(
        str(REPO / "infra/scripts/wireguard-interface.sh"),
        "up",
        env={
            **os.environ,
            "SANCTUM_GW_WG_INTERFACE": iface,
            "SANCTUM_GW_WG_PORT": str(public[1]),
            "SANCTUM_GW_WIREGUARD__PRIVATE_KEY": str(gw_key),
            "SANCTUM_GW_WG_ADDRESSES": f"{tunnel}/{tunnel_network.prefixlen}",
        },
    )
    bb_key = state / "backbone.key"
    bb_public = make_wireguard_key(bb_key)
    agent_env = process_env()
    agent_env.update(
        SANCTUM_GW_NAME=name,
        SANCTUM_GW_STATE_DIR=str(state),
        SANCTUM_GW_TRUST_KEYS=str(access.public_key),
        SANCTUM_GW_SIGNING_KEY=str(signing_key),
        SANCTUM_GW_WIREGUARD__PRIVATE_KEY=str(gw_key),
        SANCTUM_GW_WIREGUARD__BACKBONE_PRIVATE_KEY=str(bb_key),
        SANCTUM_GW_LISTEN__HOST=agent[0],
        SANCTUM_GW_LISTEN__PORT=str(agent[1]),
        SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE="eth0",
        **env,
    )
    build.create("/address-pools/", pool)
    gateway = build.create(
        "/gateways/",
        {
            "name": name,
            "public_endpoint": f"{public[0]}:{public[1]}",
            "public_key": gw_public,
            "management_url": f"https://{agent[0]}:{agent[1]}",
            "signing_key": signing_key.with_suffix(".pub").read_text(),
            "pool": pool["name"],
            "interface_name": iface,
            "listen_port": public[1],
            "upstreams": upstreams,
        },
    )
    # Enrolment: its management and ingress keys are made on the gateway; the control
    # plane issues the certificates (the ingress one for its name and tunnel addresses).
    enrol(access.mgmt, access.api, access.url, "gateway", name, state / "tls")
    agent_argv = [sys.executable, "-m", "data_plane.gateway", "serve"]
    agent_name = f"agent {name}"
    start(build.processes, ns, agent_name, agent_argv, agent_env, "SANCTUM_GW_READY", 60)
    # The gateway joins the backbone; the nodes' next config lets it in.
    joined = build.create(
        "/backbone-members/",
        {
            "pool": "backbone",
            "gateway": name,
            "public_key": bb_public,
            "interface_name": backbone_iface,
        },
    )
    interface_up(ns, backbone_iface, BACKBONE_PORT, bb_key, f"{joined['address']}/24")
    return GatewaySite(
        id=gateway["id"],
        name=name,
        ns=ns,
        state=state,
        iface=iface,
        backbone_iface=backbone_iface,
        backbone_address=joined["address"],
        api_base=gateway["api_base"],
        signing_key=signing_key,
    )


def roll_out_nodes(api: Api, nodes: Mapping[str, int], timeout: float = 300) -> None:
    """Release to ``nodes`` (name -> id) through the API; wait until each is in sync."""
    assert api("POST", "/releases/", json={"nodes": list(nodes)}).status_code == 202

    def states() -> list[dict[str, Any]]:
        return [api("GET", f"/nodes/{i}/").json() for i in nodes.values()]

    def in_sync() -> bool:
        return all(node["rollout"] == "in_sync" for node in states())

    assert wait_until(in_sync, timeout=timeout, interval=0.5), states()


def roll_out_gateways(api: Api, gateways: Mapping[str, int], timeout: float = 120) -> int:
    """Release to ``gateways`` (name -> id); wait until each agent applied its push.
    Returns the highest version released."""
    response = api("POST", "/gateway-releases/", json={"gateways": list(gateways)})
    assert response.status_code == 202, response.text
    versions = {r["gateway"]: int(r["version"]) for r in response.json()}

    def applied() -> bool:
        for name, gateway_id in gateways.items():
            state = api("GET", f"/gateways/{gateway_id}/").json()["state"] or {}
            if (state.get("applied_version") or 0) < versions[name]:
                return False
        return True

    releases = "/gateway-releases/"
    assert wait_until(applied, timeout=timeout), json.dumps(api("GET", releases).json())
    return max(versions.values())


def provision_peer(
    build: Build,
    tmp: Path,
    ns: Namespace,
    *,
    client: str,
    gateway: str,
    api_key: str,
    api_base: str,
    iface_suffix: str,
    own: tuple[str, str] | None = None,
) -> Peer:
    """Provision a peer of ``client`` on ``gateway`` (whose API is at ``api_base``)
    through the API and keep what came back: the config file byte for byte, and the
    ingress CA. ``own`` is a key pair the client brought (private, public): only its
    public half is sent."""
    body = {"client": client, "gateway": gateway, "name": f"{client}'s laptop"}
    if own:
        body["public_key"] = own[1]
    provisioned = build.create("/peers/", body)
    iface = build.lab.wg_name(iface_suffix)
    conf = tmp / f"{iface}.conf"
    # The file the control plane returned, byte for byte.
    conf.write_text(provisioned["config"])
    conf.chmod(0o600)
    ca = tmp / f"{iface}-ingress-ca.pem"  # came with the download: trust for TLS
    ca.write_text(provisioned["ingress_ca"])
    return Peer(
        id=provisioned["id"],
        ns=ns,
        iface=iface,
        api_key=api_key,
        own_private_key=own[0] if own else None,
        conf=conf,
        config_text=provisioned["config"],
        ca=ca,
        api_base=api_base,
    )


def tcp_exchange(address: tuple[str, int], payload: bytes, timeout: float = 3) -> bytes:
    """Connect, send, read to EOF. Raises TimeoutError when nothing answers at all."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def tls_exchange(address: tuple[str, int], payload: bytes, ca: Path, timeout: float = 10) -> bytes:
    """``tcp_exchange`` over TLS, verifying the gateway's certificate with ``ca``."""
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(address, timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=address[0]) as s,
    ):
        s.sendall(payload)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def refused(address: tuple[str, int]) -> bool:
    """Whether a connection to ``address`` is refused (a reset: nothing listens)."""
    try:
        tcp_exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    except ConnectionRefusedError:
        return True
    return False


def ingress_serial(peer: Peer) -> str:
    """The serial of the certificate nginx presents to ``peer`` on a new connection."""
    host = peer.gateway_address
    with (
        socket.create_connection((host, 443), timeout=10) as raw,
        peer.tls().wrap_socket(raw, server_hostname=host) as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def wg_up(peer: Peer) -> None:
    """Bring the peer's tunnel up from its config file, as a client would."""
    peer.ns.sh("wg-quick", "up", str(peer.conf), env={**os.environ, **USERSPACE})
    if peer.own_private_key is not None:
        # The file has no private key (it never left the client): the client adds it.
        key_file = peer.conf.with_suffix(".key")
        key_file.write_text(peer.own_private_key + "\n")
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
