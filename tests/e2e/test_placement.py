"""Placement end to end (issue 15: node pools), over real tunnels in network namespaces:
two gateways, three nodes, three clients, driven by the control plane's REST API.

    solo  ─┐                                  ┌─ gw-a ─┐                ┌─ node-1  (dedicated-solo)
    alpha ─┼─ wan (bridge, 192.0.2.0/24) ─────┤        ├─ core (bridge) ┼─ node-2  (shared-1)
    beta  ─┘  each client: a tunnel to both   └─ gw-b ─┘  backbone      └─ node-3  (shared-1)
                                                   │     WireGuard          │
                           mgmt (bridge, 10.201.0.0/24): the control plane ─┘
                           (gunicorn, Celery worker and beat, redis-server; PostgreSQL)

Every node and both gateways are on one backbone pool, and both gateways list all three
nodes as upstreams. Each node is a real ``python -m data_plane serve`` with the bundled
model, its client API on its backbone address only; each gateway runs real
wireguard-go, nginx and its agent, with its own tunnel address pool, enrolled for TLS.
Each client has an API key and a peer on gw-a and on gw-b, both tunnels up (wg-quick) in
the client's namespace, and talks with the ``openai`` SDK through either.

Placement: ``dedicated-solo`` (node-1) serves ``solo`` alone; ``shared-1`` (node-2 and
node-3) serves ``alpha`` and ``beta``; the model pin is placed on both pools. Which node
served a call is read where an auditor reads it: the node ID of its receipt, collected
by the worker from the nodes' signed usage records.

The control plane runs on PostgreSQL: a database made for this module on the test
cluster, reached from the management namespace through a Unix socket
(``tests.e2e.postgres``).

The tests run in file order on one world, and the later ones change it: node-3 drains
and comes back, ``solo`` moves to ``shared-1``, and the last one kills node-2.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shared.keys import write_key_pair
from shared.models import DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION, bundled_gguf_path
from tests.conftest import wait_until
from tests.control_plane.processes import ControlPlane, Process
from tests.e2e import world as e2e  # the steps that build a world
from tests.e2e.netns import Lab, lab
from tests.e2e.postgres import Database, throwaway_database
from tests.e2e.world import WORLD_MARKS, Build, ControlPlaneAccess, GatewaySite, NodeSite, Peer

pytestmark = [*WORLD_MARKS, pytest.mark.postgres]  # PostgreSQL: make sets it up for CI

SESSION = "X-Sanctum-Session"
API_PORT = 8000
MANAGEMENT_PORT = 8001
AGENT_PORT = 8003
WG_PORT = 51820
BACKBONE = "10.90.0.0/24"


@dataclass(frozen=True)
class GatewayPlan:
    name: str
    public: str  # on the wan bridge
    underlay: str  # on the core bridge: where its backbone packets leave from
    management: str  # the agent's address, on the management bridge
    tunnel_pool: str


@dataclass(frozen=True)
class NodePlan:
    name: str
    pool: str
    underlay: str
    management: str


GATEWAYS = (
    GatewayPlan("gw-a", "192.0.2.1", "10.200.0.1", "10.201.0.1", "10.77.0.0/24"),
    GatewayPlan("gw-b", "192.0.2.2", "10.200.0.2", "10.201.0.2", "10.78.0.0/24"),
)
DEDICATED, SHARED = "dedicated-solo", "shared-1"
NODES = (
    NodePlan("node-1", DEDICATED, "10.200.0.11", "10.201.0.11"),
    NodePlan("node-2", SHARED, "10.200.0.12", "10.201.0.12"),
    NodePlan("node-3", SHARED, "10.200.0.13", "10.201.0.13"),
)
CLIENTS = {"solo": DEDICATED, "alpha": SHARED, "beta": SHARED}
CLIENT_PUBLIC = {"solo": "192.0.2.11", "alpha": "192.0.2.12", "beta": "192.0.2.13"}
POOL_NODES = {DEDICATED: {"node-1"}, SHARED: {"node-2", "node-3"}}
GATEWAY_NAMES = tuple(g.name for g in GATEWAYS)


@dataclass
class World:
    lab: Lab
    tmp: Path
    database: Database
    access: ControlPlaneAccess
    cp: ControlPlane
    nodes: dict[str, NodeSite]
    gateways: dict[str, GatewaySite]
    keys: dict[str, str] = field(default_factory=dict)  # client -> API key
    peers: dict[tuple[str, str], Peer] = field(default_factory=dict)  # (client, gateway)
    processes: dict[str, Process] = field(default_factory=dict)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.access.api(method, path, **kwargs)

    def peer(self, client: str, gateway: str) -> Peer:
        return self.peers[(client, gateway)]

    def node_ids(self) -> dict[str, int]:
        return {name: site.id for name, site in self.nodes.items()}

    def gateway_ids(self) -> dict[str, int]:
        return {name: site.id for name, site in self.gateways.items()}

    def receipts(self, session_ids: list[str], timeout: float = 90) -> dict[str, list[dict]]:
        """Every receipt of each of ``session_ids``, once each has at least one: the
        worker collects the nodes' usage records every couple of seconds."""
        wanted = set(session_ids)

        def collected() -> dict[str, list[dict]] | None:
            page = self.api("GET", "/audit/receipts/", params={"limit": 1000}).json()
            found: dict[str, list[dict]] = {}
            for receipt in page["results"]:
                if receipt["session_id"] in wanted:
                    found.setdefault(receipt["session_id"], []).append(receipt)
            return found if set(found) == wanted else None

        found = wait_until(collected, timeout=timeout, interval=1)
        assert found, f"receipts not collected for {sorted(wanted)}"
        return dict(found)

    def nodes_of(self, session_ids: list[str]) -> set[str]:
        """The node IDs on the receipts of ``session_ids``."""
        return {r["node"] for rs in self.receipts(session_ids).values() for r in rs}

    def holder(self, client: str, session_id: str) -> str | None:
        """Which node holds ``session_id``, asked of each node straight over the
        backbone from gw-a (the session's owner sees it on its node, 404 elsewhere)."""
        gw = self.gateways["gw-a"].ns
        path, key = f"/v1/sessions/{session_id}", self.keys[client]
        holders = [
            name
            for name, node in self.nodes.items()
            if self.processes[name].proc.poll() is None
            and gw.run(direct, node, "GET", path, key).status_code == 200
        ]
        assert len(holders) <= 1, holders
        return holders[0] if holders else None


# --- what a client does, through its tunnel with the openai SDK -------------------------


def one_shot(peer: Peer) -> str:
    """A chat call without a session (a one-shot session on some node); its session ID."""
    return chat(peer)[0]


def chat(peer: Peer, session: str | None = None) -> tuple[str, str]:
    """One short chat turn through ``peer``'s tunnel (continuing ``session`` if given);
    returns the session ID the node answered with, and the reply."""

    def call() -> tuple[str, str]:
        raw = peer.openai(timeout=60).chat.completions.with_raw_response.create(
            model=DEFAULT_MODEL_NAME,
            max_tokens=8,
            temperature=0,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_headers={SESSION: session} if session else None,
        )
        return raw.headers[SESSION], raw.parse().choices[0].message.content or ""

    return peer.ns.run(call)


def open_session(peer: Peer) -> str:
    """POST /v1/sessions through ``peer``'s tunnel; the new session's ID."""

    def call() -> httpx.Response:
        with peer.http(timeout=60) as http:
            return http.post(
                f"{peer.api_base}/sessions",
                json={"model": DEFAULT_MODEL_NAME},
                headers={"Authorization": f"Bearer {peer.api_key}"},
            )

    response = peer.ns.run(call)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def end_session(peer: Peer, session: str) -> dict[str, Any]:
    """DELETE /v1/sessions/<id> through ``peer``'s tunnel: the session's usage. The
    session is named in the header as well as the path, as in each of its turns: the
    gateways route by the header only (the path alone:
    test_a_session_named_in_the_path_reaches_its_node_through_either_gateway)."""

    def call() -> httpx.Response:
        with peer.http(timeout=60) as http:
            return http.delete(
                f"{peer.api_base}/sessions/{session}",
                headers={"Authorization": f"Bearer {peer.api_key}", SESSION: session},
            )

    response = peer.ns.run(call)
    assert response.status_code == 200, response.text
    return dict(response.json())


def direct(node: NodeSite, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
    """A request straight to ``node``'s client API on its backbone address (run it in a
    namespace on the backbone: a gateway's)."""
    host, port = node.api
    return httpx.request(
        method,
        f"http://{host}:{port}{path}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        **kwargs,
    )


# --- the world ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    e2e.require_tools()
    tmp = tmp_path_factory.mktemp("placement")
    with throwaway_database(tmp / "pg") as database, lab() as the_lab:
        cp = ControlPlane(
            tmp / "cp",
            None,
            DATABASE_URL=database.url,
            SANCTUM_CP_ROLLOUT__HEALTH_POLL_SECONDS="2",
            SANCTUM_CP_ROLLOUT__CONNECT_TIMEOUT_SECONDS="2",
            # Placement changes reach nodes and gateways by themselves (the default, and
            # what moving a client relies on); building the world rolls out by hand too.
            SANCTUM_CP_ROLLOUT__ON_CHANGE="true",
            SANCTUM_CP_LEDGER__COLLECT_INTERVAL_SECONDS="2",  # receipts come soon
        )
        try:
            yield build_world(the_lab, tmp, database, cp)
        finally:
            cp.stop()


def build_world(the_lab: Lab, tmp: Path, database: Database, cp: ControlPlane) -> World:
    processes: dict[str, Process] = {}

    # --- namespaces and links: three bridges (public, underlay, management) ------------
    wan, core, mgmt = (the_lab.namespace(role) for role in ("wan", "core", "mgmt"))
    the_lab.bridge(wan)
    the_lab.bridge(core)
    the_lab.bridge(mgmt, address="10.201.0.254/24")
    gateway_ns = {g.name: the_lab.namespace(g.name) for g in GATEWAYS}
    node_ns = {n.name: the_lab.namespace(n.name) for n in NODES}
    client_ns = {c: the_lab.namespace(c) for c in CLIENTS}
    for g in GATEWAYS:
        ns = gateway_ns[g.name]
        the_lab.plug(wan, "br0", f"p-{g.name}", ns, "eth0", f"{g.public}/24")
        the_lab.plug(core, "br0", f"c-{g.name}", ns, "back0", f"{g.underlay}/24")
        the_lab.plug(mgmt, "br0", f"m-{g.name}", ns, "mgmt0", f"{g.management}/24")
    for n in NODES:
        ns = node_ns[n.name]
        the_lab.plug(core, "br0", f"c-{n.name}", ns, "back0", f"{n.underlay}/24")
        the_lab.plug(mgmt, "br0", f"m-{n.name}", ns, "mgmt0", f"{n.management}/24")
    for client, ns in client_ns.items():
        the_lab.plug(wan, "br0", f"p-{client}", ns, "eth0", f"{CLIENT_PUBLIC[client]}/24")

    # --- the control plane on PostgreSQL, in the management namespace ------------------
    access = e2e.start_control_plane(cp, mgmt, processes, tmp)
    api = access.api
    build = Build(access, the_lab, processes)
    e2e.create_backbone_pool(build, BACKBONE)
    for pool, kind in ((DEDICATED, "dedicated"), (SHARED, "shared")):
        build.create("/node-pools/", {"name": pool, "kind": kind})

    # --- the nodes: registered on their pools, on the backbone, the real data plane ----
    nodes = {
        n.name: e2e.set_up_node(
            build,
            node_ns[n.name],
            name=n.name,
            home=tmp / n.name,
            underlay=n.underlay,
            management=(n.management, MANAGEMENT_PORT),
            api_port=API_PORT,
            register={"pool": n.pool},
            SANCTUM_DP_ENGINE__THREADS="1",  # three nodes share two cores
        )
        for n in NODES
    }
    world = World(the_lab, tmp, database, access, cp, nodes, {}, processes=processes)

    # --- clients on their pools, keys, the model pinned on both pools ------------------
    for client, pool in CLIENTS.items():
        build.create("/clients/", {"id": client, "name": client, "pool": pool})
        issued = build.create("/api-keys/", {"client": client, "name": "e2e"})
        world.keys[client] = issued["key"]
    pin = build.create(
        "/model-pins/",
        {
            "name": DEFAULT_MODEL_NAME,
            "version": DEFAULT_MODEL_VERSION,
            "path": str(bundled_gguf_path()),
            "clients": list(CLIENTS),
            "pools": [DEDICATED, SHARED],
        },
    )["id"]
    assert wait_until(
        lambda: api("GET", f"/model-pins/{pin}/").json()["hash_status"] == "verified",
        timeout=180,
    )
    e2e.roll_out_nodes(api, world.node_ids())

    # --- the gateways, each fronting all three nodes -----------------------------------
    upstreams = [{"node": name, "host": s.api[0], "port": s.api[1]} for name, s in nodes.items()]
    for g in GATEWAYS:
        x = g.name[-1]
        world.gateways[g.name] = e2e.set_up_gateway(
            build,
            gateway_ns[g.name],
            name=g.name,
            state=tmp / g.name,
            signing_key=write_key_pair(tmp / f"{g.name}-keys", "gateway"),
            iface=the_lab.wg_name(f"g{x}"),
            public=(g.public, WG_PORT),
            pool={"name": f"tunnel-{x}", "ipv4_cidr": g.tunnel_pool},
            agent=(g.management, AGENT_PORT),
            upstreams=upstreams,
            backbone_iface=the_lab.wg_name(f"k{x}"),
        )
    # The nodes' next config lets both gateways in over the backbone.
    e2e.roll_out_nodes(api, world.node_ids(), timeout=120)

    # --- a peer of each client on each gateway, both tunnels up ------------------------
    for client, ns in client_ns.items():
        for name, gateway in world.gateways.items():
            world.peers[(client, name)] = e2e.provision_peer(
                build,
                tmp,
                ns,
                client=client,
                gateway=name,
                api_key=world.keys[client],
                api_base=gateway.api_base,
                iface_suffix=f"{client[:2]}{name[-1]}",
            )
    e2e.roll_out_gateways(api, world.gateway_ids())
    for peer in world.peers.values():
        e2e.wg_up(peer)
    return world


# --- the tests ---------------------------------------------------------------------------


def test_every_client_is_served_through_both_gateways(world: World) -> None:
    """The world works: each client's one-shot call answers through each gateway, the
    pools list what was placed on them, and the control plane keeps it all in
    PostgreSQL (no SQLite file beside it)."""
    for (client, gateway), peer in world.peers.items():
        session, reply = chat(peer)
        assert session.startswith("sess_") and reply, (client, gateway)
    pools = {p["name"]: p for p in world.api("GET", "/node-pools/").json()["results"]}
    stored = world.database.query("SELECT name FROM fleet_nodepool")
    assert {name for (name,) in stored} == set(pools) >= {DEDICATED, SHARED}
    assert not list((world.tmp / "cp").glob("*.sqlite3"))
    for pool, nodes in POOL_NODES.items():
        assert set(pools[pool]["nodes"]) == nodes
        assert set(pools[pool]["clients"]) == {c for c, p in CLIENTS.items() if p == pool}
        assert pools[pool]["models"] and pools[pool]["capacity"]["serving_nodes"] == len(nodes)


def test_a_dedicated_pools_client_is_served_by_its_node_only(world: World) -> None:
    sessions = [one_shot(world.peer("solo", g)) for g in GATEWAY_NAMES for _ in range(3)]
    # ...and a session continued through both gateways.
    session = open_session(world.peer("solo", "gw-a"))
    chat(world.peer("solo", "gw-b"), session)
    chat(world.peer("solo", "gw-a"), session)
    end_session(world.peer("solo", "gw-b"), session)
    assert world.nodes_of([*sessions, session]) == {"node-1"}


def test_a_shared_pools_clients_spread_over_its_nodes(world: World) -> None:
    sessions = {
        client: [one_shot(world.peer(client, g)) for g in GATEWAY_NAMES for _ in range(2)]
        for client in ("alpha", "beta")
    }
    assert world.nodes_of([*sessions["alpha"], *sessions["beta"]]) == POOL_NODES[SHARED]
    for client, ids in sessions.items():
        receipts = world.receipts(ids)
        assert {r["client"] for rs in receipts.values() for r in rs} == {client}


def test_a_session_stays_on_its_node_through_either_gateway(world: World) -> None:
    opened = {
        (client, g): open_session(world.peer(client, g))
        for client in ("alpha", "beta")
        for g in GATEWAY_NAMES
    }
    turns = ("gw-b", "gw-a", "gw-b", "gw-a")
    for (client, _), session in opened.items():
        for g in turns:
            answered, reply = chat(world.peer(client, g), session)
            assert answered == session and reply
    for (client, g), session in opened.items():
        usage = end_session(world.peer(client, g), session)
        assert usage["requests"] == len(turns)
    receipts = world.receipts(list(opened.values()))
    for session in opened.values():
        assert len(receipts[session]) == 1, receipts[session]  # one record, one node
        receipt = receipts[session][0]
        assert receipt["request_count"] == len(turns)
        assert receipt["node"] in POOL_NODES[SHARED]


def test_a_session_named_in_the_path_reaches_its_node_through_either_gateway(
    world: World,
) -> None:
    """GET and DELETE /v1/sessions/<id>, as docs/api.md shows them: the session is named
    in the path, with no X-Sanctum-Session header. Each must reach the session's node
    through either gateway, every time."""
    held = sessions_on_each_node(world, "alpha")
    for i, (node, session) in enumerate(held.items()):
        for n in range(8):
            peer = world.peer("alpha", GATEWAY_NAMES[n % 2])
            found = by_path(peer, "GET", session)
            assert found.status_code == 200, (node, peer.api_base, found.text)
        ended = by_path(world.peer("alpha", GATEWAY_NAMES[i % 2]), "DELETE", session)
        assert ended.status_code == 200, (node, ended.text)


def test_a_node_refuses_a_client_not_placed_on_it_even_when_reached_directly(
    world: World,
) -> None:
    gw = world.gateways["gw-a"].ns
    body = {
        "model": DEFAULT_MODEL_NAME,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    for node, placed, other in (
        ("node-1", "solo", "alpha"),
        ("node-2", "alpha", "solo"),
        ("node-3", "beta", "solo"),
    ):
        site = world.nodes[node]
        refused = gw.run(direct, site, "POST", "/v1/chat/completions", world.keys[other], json=body)
        assert refused.status_code == 401, (node, other, refused.text)
        assert refused.json()["error"]["message"]
        served = gw.run(direct, site, "POST", "/v1/chat/completions", world.keys[placed], json=body)
        assert served.status_code == 200, (node, placed, served.text)


def test_a_draining_node_keeps_its_sessions_and_takes_no_new_ones(world: World) -> None:
    held = sessions_on_each_node(world, "beta")
    node_3 = f"/nodes/{world.nodes['node-3'].id}/"
    before = latest_versions(world)
    drained = world.api("PATCH", node_3, json={"draining": True})
    assert drained.status_code == 200 and drained.json()["draining"] is True, drained.text
    assert wait_until(lambda: settled_after(world, before, GATEWAY_NAMES), timeout=120)
    try:
        # New work goes to node-2 only; node-3's session goes on where it is.
        sessions = [one_shot(world.peer(c, g)) for c in ("alpha", "beta") for g in GATEWAY_NAMES]
        assert world.nodes_of(sessions) == {"node-2"}
        for g in GATEWAY_NAMES:
            assert chat(world.peer("beta", g), held["node-3"])[0] == held["node-3"]
        new = open_session(world.peer("beta", "gw-b"))
        assert world.holder("beta", new) == "node-2"
        end_session(world.peer("beta", "gw-a"), new)
    finally:
        before = latest_versions(world)
        undrained = world.api("PATCH", node_3, json={"draining": False})
        assert undrained.status_code == 200, undrained.text
        assert wait_until(lambda: settled_after(world, before, GATEWAY_NAMES), timeout=120)
    for session in held.values():
        end_session(world.peer("beta", "gw-a"), session)
    receipts = world.receipts(list(held.values()))
    assert {node: receipts[s][0]["node"] for node, s in held.items()} == {n: n for n in held}
    assert receipts[held["node-3"]][0]["request_count"] == len(GATEWAY_NAMES)


def test_moving_a_client_to_another_pool_takes_effect_by_rollout_alone(world: World) -> None:
    serving = [*world.nodes, *(f"agent {name}" for name in world.gateways)]
    pids = {name: world.processes[name].proc.pid for name in serving}
    left_open = open_session(world.peer("solo", "gw-a"))  # on node-1, one turn, not ended
    chat(world.peer("solo", "gw-b"), left_open)
    before = latest_versions(world)
    moved = world.api("PATCH", "/clients/solo/", json={"pool": SHARED})
    assert moved.status_code == 200 and moved.json()["pool"] == SHARED, moved.text
    assert wait_until(lambda: settled_after(world, before), timeout=120), latest_versions(world)

    sessions = [one_shot(world.peer("solo", g)) for g in GATEWAY_NAMES for _ in range(3)]
    assert world.nodes_of(sessions) <= POOL_NODES[SHARED]
    # The session it left open on node-1 ended when node-1 applied its new config: its
    # turn is on a receipt from node-1, and continuing it finds nothing.
    (ended,) = world.receipts([left_open])[left_open]
    assert (ended["node"], ended["request_count"]) == ("node-1", 1), ended
    with pytest.raises(openai.NotFoundError):
        chat(world.peer("solo", "gw-a"), left_open)
    # The old node no longer takes the client at all.
    gw = world.gateways["gw-b"].ns
    models = gw.run(direct, world.nodes["node-1"], "GET", "/v1/models", world.keys["solo"])
    assert models.status_code == 401, models.text
    # Nothing was restarted: the same node and agent processes served throughout.
    assert {name: world.processes[name].proc.pid for name in serving} == pids
    assert all(world.processes[name].proc.poll() is None for name in serving)


def test_killing_a_shared_node_moves_new_work_to_the_other(world: World) -> None:
    held = sessions_on_each_node(world, "alpha")
    victim, survivor = "node-2", "node-3"

    world.processes[victim].stop(signal.SIGKILL)
    killed_at = time.monotonic()
    # Right after the kill, a run of one-shot calls: every one answers.
    failures = []
    sessions = []
    for n in range(8):
        peer = world.peer(("alpha", "beta")[n % 2], GATEWAY_NAMES[n // 2 % 2])
        try:
            sessions.append(one_shot(peer))
        except openai.APIError as exc:
            failures.append((n, round(time.monotonic() - killed_at, 2), repr(exc)))
    assert not failures, failures
    # New sessions open on the survivor; its open session goes on.
    for g in GATEWAY_NAMES:
        assert world.holder("alpha", open_session(world.peer("alpha", g))) == survivor
    assert chat(world.peer("alpha", "gw-b"), held[survivor])[0] == held[survivor]
    # The victim's session is gone with it, and the answer says so, through both gateways.
    for g in GATEWAY_NAMES:
        with pytest.raises(openai.NotFoundError) as lost:
            chat(world.peer("alpha", g), held[victim])
        error = lost.value.body
        assert isinstance(error, dict) and "session" in str(error.get("message")), error
    assert world.nodes_of(sessions) == {survivor}

    # The control plane sees it too: the pool has one serving node left.
    def serving_nodes() -> int:
        pools = world.api("GET", "/node-pools/").json()["results"]
        return int(next(p for p in pools if p["name"] == SHARED)["capacity"]["serving_nodes"])

    assert wait_until(lambda: serving_nodes() == 1, timeout=60), serving_nodes()


# --- helpers of the tests ------------------------------------------------------------------


def sessions_on_each_node(world: World, client: str) -> dict[str, str]:
    """A session of ``client``'s on each node of its pool (node -> session), opened
    through either gateway in turn; extra sessions are ended again."""
    nodes = POOL_NODES[SHARED]
    held: dict[str, str] = {}
    for attempt in range(12):
        peer = world.peer(client, GATEWAY_NAMES[attempt % 2])
        session = open_session(peer)
        node = world.holder(client, session)
        assert node in nodes, (session, node)
        if node in held:
            end_session(peer, session)
        held.setdefault(node, session)
        if set(held) == nodes:
            return held
    raise AssertionError(f"new sessions of {client} did not reach every node: {held}")


def by_path(peer: Peer, method: str, session: str) -> httpx.Response:
    """``method`` /v1/sessions/<session> through ``peer``'s tunnel, the session named in
    the path only."""

    def call() -> httpx.Response:
        with peer.http(timeout=60) as http:
            return http.request(
                method,
                f"{peer.api_base}/sessions/{session}",
                headers={"Authorization": f"Bearer {peer.api_key}"},
            )

    return peer.ns.run(call)


def latest_versions(world: World) -> dict[str, tuple[int, int]]:
    """For each node and gateway: (its latest release's version, its applied version)."""
    out = {}
    for name, node_id in world.node_ids().items():
        node = world.api("GET", f"/nodes/{node_id}/").json()
        latest = (node["latest_release"] or {}).get("version") or 0
        out[name] = (latest, (node["state"] or {}).get("applied_version") or 0)
    for name, gateway_id in world.gateway_ids().items():
        params = {"gateway": name, "ordering": "-version", "limit": 1}
        releases = world.api("GET", "/gateway-releases/", params=params).json()["results"]
        state = world.api("GET", f"/gateways/{gateway_id}/").json()["state"] or {}
        out[name] = (releases[0]["version"] if releases else 0, state.get("applied_version") or 0)
    return out


def settled_after(
    world: World, before: dict[str, tuple[int, int]], targets: tuple[str, ...] | None = None
) -> bool:
    """Whether every one of ``targets`` (default: every node and gateway) has applied a
    release newer than it had in ``before``."""
    now = latest_versions(world)
    return all(now[t][1] >= now[t][0] > before[t][0] for t in targets or tuple(before))
