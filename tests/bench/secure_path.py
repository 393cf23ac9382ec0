"""The secured path's cost: time to first token through TLS and the backbone, against
the plain path, in the same run (issue 13).

Two network namespaces, made and always removed by the benchmark:

    gw: the client (source 10.77.0.2,       under0 (veth, the underlay)      node: python -m
        an enabled peer's tunnel address) ──── 10.200.0.1 ── 10.200.0.2 ──── data_plane serve
        nginx "plain" and nginx "secured"    backbone: WireGuard (wireguard-go) (real model,
        on 10.77.0.1 (on loopback)             10.90.0.3 ── 10.90.0.2            API on 0.0.0.0)

One node process serves every path (its client API binds every address, so the
underlay and the backbone reach the same process and the same model). Two real nginx
instances, each rendered by the agent's own renderer from the real template and a
:class:`GatewayConfig`:

- **plain**: plain HTTP, upstream the node's underlay address, no backbone (what every
  request took before issue 13);
- **secured**: TLS with an ingress certificate from the real CA code (``shared.pki``),
  upstream the node's backbone address (the config carries the backbone, so its
  contract holds). The same instance also has plain HTTP turned on, which gives the
  **backbone only** row: the backbone without TLS, to split the cost in two.

A fourth path, **node direct**, goes from the gateway namespace to the node's underlay
address with no nginx: the floor every path stands on (the node's prefill and first
decode step).

The client streams short chats (greedy, 8 tokens, a fresh prompt each time so no
cache helps one path) and takes the time from sending the request to the first content
token. Each round asks every path once with a new connection per request (TCP and, for
TLS, a full handshake: the client keeps no session to resume) and once on a kept-alive
connection; the order of the paths rotates round by round.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from data_plane.gateway.nginx import RenderPaths, ingress_files, render
from shared.backbone import BackboneInterface, BackbonePeer, render_syncconf
from shared.gateway import GatewayConfig, Upstream, WireGuardInterface, make_peer
from shared.pki import SERVER, CertificateAuthority, TlsMaterial, certificate_pem, ensure_tls_key
from shared.wireguard import generate_key_pair, generate_preshared_key
from tests.bench import write_section
from tests.bench._node import MODEL, first_token, median, quantile
from tests.conftest import REPO, Node, bundled_model_spec, make_tenant, new_node, release_fields
from tests.e2e.netns import Lab, Namespace, lab
from tests.e2e.world import interface_up, make_wireguard_key

ROUNDS = 40
WARMUP = 3
MAX_TOKENS = 8
ENGINE_THREADS = 1

GATEWAY = "gw-bench"
NODE = "node-1"
GW_TUNNEL = "10.77.0.1"  # nginx listens here (the gateway's tunnel address)
PEER = "10.77.0.2"  # the client's source: an enabled peer's tunnel address
GW_UNDERLAY, NODE_UNDERLAY = "10.200.0.1", "10.200.0.2"
GW_BACKBONE, NODE_BACKBONE = "10.90.0.3", "10.90.0.2"
BACKBONE_PORT = 51821
API_PORT = 8000
PLAIN_PORT, BACKBONE_HTTP_PORT, TLS_PORT = 8080, 8081, 8443

NODE_DIRECT, PLAIN, BACKBONE_ONLY, SECURED = "node direct", "plain", "backbone only", "secured"
PATHS = {
    NODE_DIRECT: f"http://{NODE_UNDERLAY}:{API_PORT}/v1",
    PLAIN: f"http://{GW_TUNNEL}:{PLAIN_PORT}/v1",
    BACKBONE_ONLY: f"http://{GW_TUNNEL}:{BACKBONE_HTTP_PORT}/v1",
    SECURED: f"https://{GW_TUNNEL}:{TLS_PORT}/v1",
}
NEW, KEPT = "new connection", "kept alive"
THINGS = ("lemon", "cloud", "tomato", "leaf", "crow", "snow", "plum", "brick", "sea", "coal")


@dataclass
class Gateway:
    """The gateway namespace's two nginx instances and the client's trust."""

    ca_pem: str
    configs: list[Path]


def _backbone(lab_: Lab, gw: Namespace, node: Namespace, tmp: Path) -> BackboneInterface:
    """Both ends of the backbone over the underlay; returns the gateway's end."""
    gw_key, node_key = tmp / "gw-backbone.key", tmp / "node-backbone.key"
    gw_public, node_public = make_wireguard_key(gw_key), make_wireguard_key(node_key)
    gw_if, node_if = lab_.wg_name("gb"), lab_.wg_name("nb")
    interface_up(gw, gw_if, BACKBONE_PORT, gw_key, f"{GW_BACKBONE}/24")
    interface_up(node, node_if, BACKBONE_PORT, node_key, f"{NODE_BACKBONE}/24")
    gw_side = BackboneInterface(
        name=gw_if,
        public_key=gw_public,
        address=f"{GW_BACKBONE}/24",
        listen_port=BACKBONE_PORT,
        peers=(
            BackbonePeer(
                name=NODE,
                public_key=node_public,
                address=NODE_BACKBONE,
                endpoint=f"{NODE_UNDERLAY}:{BACKBONE_PORT}",
            ),
        ),
    )
    node_side = BackboneInterface(
        name=node_if,
        public_key=node_public,
        address=f"{NODE_BACKBONE}/24",
        listen_port=BACKBONE_PORT,
        peers=(BackbonePeer(name=GATEWAY, public_key=gw_public, address=GW_BACKBONE),),
    )
    for ns, side, key in ((gw, gw_side, gw_key), (node, node_side, node_key)):
        text = render_syncconf(side, key.read_text().strip())
        ns.sh("wg", "syncconf", side.name, "/dev/stdin", input=text)
    return gw_side


def _userspace(ns: Namespace) -> bool:
    """Whether the namespace's WireGuard runs in wireguard-go (no kernel module here)."""
    for pid in ns.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                return True
        except OSError:
            continue
    return False


def _config(
    upstream_host: str,
    http_port: int,
    *,
    tls: TlsMaterial | None = None,
    backbone: BackboneInterface | None = None,
) -> GatewayConfig:
    """A gateway config whose one enabled peer is the client's address."""
    _, tunnel_public = generate_key_pair()
    _, peer_public = generate_key_pair()
    return GatewayConfig.create(
        version=1,
        **release_fields(),
        gateway=GATEWAY,
        interface=WireGuardInterface(public_key=tunnel_public, addresses=(f"{GW_TUNNEL}/24",)),
        http_port=http_port,
        https_port=TLS_PORT,
        plain_http=True,
        tls=tls,
        peers=[
            make_peer(
                id="peer-1",
                client="acme",
                public_key=peer_public,
                addresses=(PEER,),
                enabled=True,
                preshared_key=generate_preshared_key(),
                gateway=GATEWAY,
                gateway_public_key=tunnel_public,
            )
        ],
        upstreams=[Upstream(node=NODE, host=upstream_host, port=API_PORT)],
        backbone=backbone,
    )


def _nginx(gw: Namespace, root: Path, config: GatewayConfig, tls_dir: Path | None) -> Path:
    """Render with the agent's renderer, check with ``nginx -t``, start; the config file."""
    paths = RenderPaths(
        pid_file=root / "nginx.pid",
        log_dir=root / "log",
        temp_dir=root / "temp",
        user=None,
        max_body="2m",
        listen_host=GW_TUNNEL,
        http_port=config.http_port,
    )
    for directory in (paths.log_dir, paths.temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    ingress = ingress_files(config, tls_dir) if tls_dir else None
    assert (ingress is not None) == (tls_dir is not None), "no ingress certificate to serve"
    template = (REPO / "infra/nginx/gateway.conf.template").read_text("utf-8")
    conf = root / "nginx.conf"
    conf.write_text(render(template, config, paths, ingress=ingress))
    gw.sh("nginx", "-t", "-q", "-c", str(conf))
    gw.sh("nginx", "-c", str(conf))
    return conf


def _gateway(gw: Namespace, tmp: Path, backbone: BackboneInterface) -> Gateway:
    ca = CertificateAuthority.open(tmp / "ingress-ca", "ingress", create=True)
    tls_dir = tmp / "secured" / "tls"
    key = ensure_tls_key(tls_dir / "ingress.key")  # made on the gateway, as at enrolment
    cert = ca.issue(
        key.public_key(),
        GATEWAY,
        usage=SERVER,
        lifetime=dt.timedelta(days=1),
        ip_addresses=[GW_TUNNEL],
    )
    tls = TlsMaterial(
        ca=ca.certificate_pem,
        ingress_ca=ca.certificate_pem,
        ingress_certificate=certificate_pem(cert),
    )
    plain = _config(NODE_UNDERLAY, PLAIN_PORT)
    secured = _config(NODE_BACKBONE, BACKBONE_HTTP_PORT, tls=tls, backbone=backbone)
    return Gateway(
        ca_pem=ca.certificate_pem,
        configs=[
            _nginx(gw, tmp / "plain", plain, None),
            _nginx(gw, tmp / "secured", secured, tls_dir),
        ],
    )


def _prompt(n: int) -> str:
    """A fresh prompt of the same length each time (no prefix beyond the template is
    shared with an earlier request, so no path gets a cache hit the other does not)."""
    return f"Note {n:04d}: in one word, what colour is a {THINGS[n % len(THINGS)]}?"


def _body(n: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": _prompt(n)}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }


def _client(path: str, key: str, context: ssl.SSLContext) -> httpx.AsyncClient:
    # nginx answers peers only; the node sees the gateway's underlay address.
    source = GW_UNDERLAY if path == NODE_DIRECT else PEER
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=context)
    return httpx.AsyncClient(
        base_url=PATHS[path],
        transport=transport,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


Times = dict[tuple[str, str], list[float]]


@dataclass
class Measured:
    ttft: Times  # seconds to the first content token, by (path, connection), round by round
    round_trip: Times  # seconds for ``GET /v1/models`` (no model work), the same way
    prompt_tokens: int
    tls: str  # the secured path's negotiated protocol and cipher suite


async def _measure(key: str, ca_pem: str) -> Measured:
    """Every round's times by (path, connection); what the secured path negotiated."""
    context = ssl.create_default_context(cadata=ca_pem)
    ttft: Times = {(p, m): [] for p in PATHS for m in (NEW, KEPT)}
    round_trip: Times = {(p, m): [] for p in PATHS for m in (NEW, KEPT)}
    kept = {path: _client(path, key, context) for path in PATHS}
    counter = iter(range(1, 1_000_000))

    async def chat(client: httpx.AsyncClient) -> float:
        status, seconds, _, _ = await first_token(client, _body(next(counter)))
        assert status == 200, f"{client.base_url}: status {status}"
        return seconds

    async def models(client: httpx.AsyncClient) -> float:
        sent = time.perf_counter()
        response = await client.get("/models")
        assert response.status_code == 200, f"{client.base_url}: {response.status_code}"
        return time.perf_counter() - sent

    async def once(path: str, mode: str, record: bool = True) -> None:
        for what, times in ((chat, ttft), (models, round_trip)):
            if mode == KEPT:
                seconds = await what(kept[path])
            else:
                async with _client(path, key, context) as fresh:
                    seconds = await what(fresh)
            if record:
                times[(path, mode)].append(seconds)

    try:
        probe = await kept[PLAIN].post("/chat/completions", json=_body(0))
        probe.raise_for_status()
        prompt_tokens = int(probe.json()["usage"]["prompt_tokens"])
        async with kept[SECURED].stream("GET", "/models") as response:
            tls = response.extensions["network_stream"].get_extra_info("ssl_object")
            negotiated = f"{tls.version()}, {tls.cipher()[0]}"
        for _ in range(WARMUP):  # the model, nginx's upstream pools, the backbone handshake
            for path in PATHS:
                for mode in (NEW, KEPT):
                    await once(path, mode, record=False)
        order = list(PATHS)
        for n in range(ROUNDS):
            rotated = order[n % len(order) :] + order[: n % len(order)]
            for mode in (NEW, KEPT):
                for path in rotated:
                    await once(path, mode)
    finally:
        for client in kept.values():
            await client.aclose()
    return Measured(ttft, round_trip, prompt_tokens, negotiated)


@contextmanager
def _node(ns: Namespace, tmp: Path, tenant_spec: Any) -> Iterator[Node]:
    """The one node: started from a thread inside ``ns`` (its children live there)."""
    node = new_node(
        tmp,
        SANCTUM_DP_LOG_LEVEL="WARNING",
        # Every address: the underlay (plain path) and the backbone (secured path) reach
        # the same process.
        SANCTUM_DP_LISTEN__API_HOST="0.0.0.0",  # noqa: S104
        SANCTUM_DP_LISTEN__API_PORT=str(API_PORT),
        # One engine thread: llama.cpp's threads wait on each other at every step, so on
        # a shared machine two threads make the node's time (which every path pays)
        # swing by far more than what is measured here.
        SANCTUM_DP_ENGINE__THREADS=str(ENGINE_THREADS),
    )
    try:
        ns.run(node.start, 180)
        ns.run(node.push, [bundled_model_spec()], [tenant_spec])
        yield node
    finally:
        node.stop()


def _stop_nginx(gw: Namespace, configs: list[Path]) -> None:
    for conf in configs:
        gw.sh("nginx", "-c", str(conf), "-s", "quit", check=False)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    assert os.geteuid() == 0, "needs root (network namespaces)"
    started = time.monotonic()
    tenant = make_tenant("acme", (MODEL,))
    with (
        tempfile.TemporaryDirectory(prefix="sanctum-bench-secure-path-") as tmp_name,
        lab() as the_lab,
    ):
        tmp = Path(tmp_name)
        gw, node_ns = the_lab.namespace("gw"), the_lab.namespace("node")
        the_lab.link(gw, "under0", node_ns, "under0")
        gw.ip("address", "add", f"{GW_UNDERLAY}/30", "dev", "under0")
        node_ns.ip("address", "add", f"{NODE_UNDERLAY}/30", "dev", "under0")
        # The tunnel addresses on loopback (no dummy module here): the client's tunnel is
        # the same on every path, so it is left out of what is measured.
        gw.ip("address", "add", f"{GW_TUNNEL}/32", "dev", "lo")
        gw.ip("address", "add", f"{PEER}/32", "dev", "lo")
        backbone = _backbone(the_lab, gw, node_ns, tmp)
        userspace = _userspace(gw) and _userspace(node_ns)
        configs: list[Path] = []
        try:
            with _node(node_ns, tmp / "node", tenant):
                gateway = _gateway(gw, tmp, backbone)
                configs = gateway.configs
                measured = gw.run(asyncio.run, _measure(tenant.key, gateway.ca_pem))
        finally:
            _stop_nginx(gw, configs)
    elapsed = time.monotonic() - started
    ttft, round_trip = measured.ttft, measured.round_trip

    def paired(times: Times, path: str, mode: str) -> float:
        """The median of the round-by-round differences against plain (the two ran
        seconds apart, so the machine's drift mostly cancels)."""
        base = times[(PLAIN, mode)]
        return median([a - b for a, b in zip(times[(path, mode)], base, strict=True)])

    def row(times: Times, path: str, mode: str) -> str:
        xs, base = times[(path, mode)], times[(PLAIN, mode)]
        if path == PLAIN:
            extra = "baseline | baseline | 1.00x"
        else:
            added = (median(xs) - median(base)) * 1000
            extra = (
                f"{added:+.1f} | {paired(times, path, mode) * 1000:+.1f} | "
                f"{median(xs) / median(base):.2f}x"
            )
        return f"| {path} | {mode} | {_ms(median(xs))} | {_ms(quantile(xs, 0.9))} | {extra} |"

    def table(times: Times) -> str:
        return "\n".join(
            row(times, p, m)
            for m in (NEW, KEPT)
            for p in (PLAIN, BACKBONE_ONLY, SECURED, NODE_DIRECT)
        )

    header = (
        "| path | connection | median | p90 | added (medians) | added (paired) | ratio |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    added_new, added_kept = paired(ttft, SECURED, NEW), paired(ttft, SECURED, KEPT)
    floor = median(ttft[(NODE_DIRECT, KEPT)])
    tokens = measured.prompt_tokens
    swing = quantile(ttft[(PLAIN, NEW)], 0.9) - median(ttft[(PLAIN, NEW)])
    path_new, path_kept = paired(round_trip, SECURED, NEW), paired(round_trip, SECURED, KEPT)
    share = path_new / median(ttft[(PLAIN, NEW)])
    network = median(round_trip[(NODE_DIRECT, KEPT)])
    wireguard = "wireguard-go (no kernel module on this machine)" if userspace else "WireGuard"
    body = f"""
## Secured path: time to first token through TLS and the backbone

One node (`python -m data_plane serve`, bundled model, {ENGINE_THREADS} engine thread) in its
own network namespace, reached from the gateway's namespace over a veth underlay; the
backbone is real {wireguard} over it, set up with
`infra/scripts/wireguard-interface.sh` and `wg syncconf` from `shared.backbone`. Two
real nginx instances rendered by the agent's renderer from
`infra/nginx/gateway.conf.template`: **plain** (HTTP, upstream the node's underlay
address: the path before issue 13) and **secured** (TLS with an ingress certificate
from `shared.pki`'s CA for an ECDSA P-256 key, {measured.tls}; upstream the node's
backbone address). The
secured instance also serves plain HTTP, which gives **backbone only** (the backbone
without TLS); **node direct** skips nginx. The client (httpx, from an enabled peer's
address) streams chats of {tokens} prompt tokens, {MAX_TOKENS} tokens greedy, a fresh
prompt each time, and times the request to its first content token; after each chat it
times a `GET /v1/models` the same way (no model work: the path's own cost). {ROUNDS}
rounds after {WARMUP} of warm-up; each round asks every path once per connection kind,
the order of the paths rotating round by round. "New connection": TCP and a full TLS
handshake (the client resumes no session) inside the timing; "kept alive": one
connection per path for the whole run. Milliseconds; "added" is against plain in the
same run, as the difference of the medians and as the median of the round-by-round
differences. `python -m tests.bench secure_path` (`tests/bench/secure_path.py`),
{elapsed:.0f} s.

Time to first token:

{header}
{table(ttft)}

`GET /v1/models` round trip:

{header}
{table(round_trip)}

On the first token the secured path differs from plain by **{added_new * 1000:+.1f} ms**
on a new connection and **{added_kept * 1000:+.1f} ms** on a kept-alive one (paired
medians): less than the node's own swing from request to request (plain's p90 is
{swing * 1000:.0f} ms above its median). Without model work, the same comparison gives the
secured path's own cost: **{path_new * 1000:+.1f} ms** on a new connection (the TLS
handshake, and the backbone's encryption both ways) and **{path_kept * 1000:+.1f} ms** kept
alive, {share:.1%} of plain's median first token. The first token is dominated by the
node's prefill: {_ms(floor)} ms straight to the node on a kept-alive connection, of
which the network and HTTP take about {_ms(network)} ms (the same path's `/v1/models`);
the rest is the {tokens}-token prompt's prefill and the first decode step on 2 shared
cores. A longer prompt makes that part larger and leaves the secured path's share the
same.
"""
    write_section("secure-path", body)
    print(body)
