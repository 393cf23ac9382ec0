"""nginx on the gateway: the config rendered from the template, checked, swapped, reloaded.

A rendered config replaces the running one only after ``nginx -t`` passed on it; if the
check fails, the file on disk and the running nginx stay as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from data_plane.gateway.commands import CommandFailed, run
from data_plane.gateway.settings import GatewaySettings
from shared.gateway import GatewayConfig
from shared.routing import ROUTE_TAG, route_tag

logger = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"@@([A-Z0-9_]+)@@")
RELOAD_WAIT_SECONDS = 10.0


class TemplateError(ValueError):
    """The nginx template lacks a placeholder the agent fills, or has an unknown one."""


class NginxCheckFailed(RuntimeError):
    """``nginx -t`` refused the rendered config; ``detail`` is nginx's own message."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class RenderPaths:
    pid_file: Path
    log_dir: Path
    temp_dir: Path
    user: str | None
    max_body: str
    listen_host: str | None = None
    http_port: int = 80


@dataclass(frozen=True)
class IngressFiles:
    """The ingress certificate (from the signed config) and key (made at enrolment)."""

    certificate: Path
    key: Path


INGRESS_KEY = "ingress.key"


def ingress_files(config: GatewayConfig | None, tls_dir: Path) -> IngressFiles | None:
    """Where nginx finds the config's ingress certificate, written there if new.

    Each certificate gets its own file (named by its hash), so the file the running
    nginx was started with stays as it was until the reload that replaces it.
    """
    pem = config.tls.ingress_certificate if config and config.tls else None
    key = tls_dir / INGRESS_KEY
    if pem is None or not key.exists():
        return None
    digest = hashlib.sha256(pem.encode("ascii")).hexdigest()[:16]
    cert = tls_dir / f"ingress-{digest}.crt"
    if not cert.exists():
        _write(cert, pem)
    return IngressFiles(cert, key)


# TLS for clients inside their tunnel: 1.2 and 1.3 with forward-secret AEAD suites only
# (Mozilla's "intermediate"), no session tickets (their key would outlive a reload).
_TLS_DIRECTIVES = (
    "ssl_certificate {cert};",
    "ssl_certificate_key {key};",
    "ssl_protocols TLSv1.2 TLSv1.3;",
    "ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305;",
    "ssl_prefer_server_ciphers off;",
    "ssl_session_cache shared:sanctum_tls:10m;",
    "ssl_session_timeout 1h;",
    "ssl_session_tickets off;",
)


def _entry_lines(entries: list[str], indent: str = "        ") -> str:
    return "\n".join(indent + e for e in entries)


def _listen(hosts: list[str], port: int, tls: bool = False) -> list[str]:
    """A listener on each of ``hosts`` (never a wildcard: nginx binds only what it
    serves), with TLS or plain."""
    ssl = " ssl" if tls else ""
    return [f"listen {f'[{h}]' if ':' in h else h}:{port}{ssl} default_server;" for h in hosts]


def listen_hosts(config: GatewayConfig | None, listen_host: str | None) -> list[str]:
    """Where nginx listens: the configured host, else the gateway's tunnel addresses
    (before any config: loopback only, so nothing outside the machine reaches it)."""
    if listen_host:
        return [listen_host]
    if config is None:
        return ["127.0.0.1"]
    return list(config.interface.hosts())


@dataclass(frozen=True)
class Routes:
    """The upstream blocks and maps that send each peer to its pool's nodes.

    Pools are numbered from 1 (0 is "not a peer" in the allow-map); each gets an
    upstream ``sanctum_pool_<n>`` of its serving nodes (draining ones left out), balanced
    by least connections. Each node gets an upstream ``sanctum_node_<i>`` of its own, and
    the route map sends a session whose id carries the node's tag there, but only when
    the node is in the peer's own pool.
    """

    pools: dict[str | None, int]
    upstreams: list[str]
    route_map: list[str]
    tries: int


def routes(config: GatewayConfig | None) -> Routes:
    upstreams = list(config.upstreams) if config else []
    peers = config.enabled_peers() if config else []
    keys = {u.pool for u in upstreams} | {p.pool for p in peers}
    pools = {key: n for n, key in enumerate(sorted(keys, key=lambda k: k or ""), 1)}
    blocks: list[str] = []
    tries = 1
    for key, number in pools.items():
        serving = [u for u in upstreams if u.pool == key and not u.draining]
        tries = max(tries, len(serving))
        servers = [
            f"server {u.address} max_fails=1 fail_timeout=10s;  # {u.node}" for u in serving
        ] or [
            # nginx wants a server in every upstream; with none to serve this pool, this
            # one is marked down, so its peers get the "unreachable" error, never a node.
            "server 127.0.0.1:9 down;  # no node serves this pool here"
        ]
        blocks.append(
            _upstream(
                f"sanctum_pool_{number}",
                f"pool {key or '(all nodes)'}",
                ["least_conn;", *servers],
                32,
            )
        )
    route_map = []
    for index, u in enumerate(upstreams, 1):
        name = f"sanctum_node_{index}"
        blocks.append(_upstream(name, f"node {u.node}", [f"server {u.address};"], 8))
        route_map.append(f'"{pools[u.pool]}:{route_tag(u.node)}" {name};  # {u.node}')
    return Routes(pools, blocks, route_map, tries)


def _upstream(name: str, comment: str, lines: list[str], keepalive: int) -> str:
    # A shared zone: every worker balances with the same connection counts and marks a
    # failed node for all (without it each worker keeps its own, and picks alone).
    body = _entry_lines([f"zone {name} 64k;", *lines, f"keepalive {keepalive};"], "        ")
    return f"    upstream {name} {{  # {comment}\n{body}\n    }}"


def render(
    template: str,
    config: GatewayConfig | None,
    paths: RenderPaths,
    ingress: IngressFiles | None = None,
) -> str:
    """Fill the template for ``config`` (``None``: before any config, nobody is a peer).

    With ``ingress`` (the gateway has enrolled), nginx serves TLS on the tunnel
    addresses; plain HTTP only when the config turns it on (``plain_http``). A config
    that allows neither leaves one plain listener that answers every connection 444.
    Each peer is routed to the nodes of its client's pool (:func:`routes`).
    """
    http_port = config.http_port if config else paths.http_port
    hosts = listen_hosts(config, paths.listen_host)
    routing = routes(config)
    allow = [
        f"{address} {routing.pools[peer.pool]};"
        for peer in (config.enabled_peers() if config else [])
        for address in peer.addresses
    ]
    listen: list[str] = []
    tls_lines = ["# no ingress certificate: TLS is off"]
    if config is not None and ingress is not None:
        listen += _listen(hosts, config.https_port, tls=True)
        tls_lines = [
            line.format(cert=ingress.certificate, key=ingress.key) for line in _TLS_DIRECTIVES
        ]
    if config is None or config.plain_http or not listen:
        listen += _listen(hosts, http_port)
        if config is not None and not config.plain_http:
            allow = []  # neither TLS nor plain HTTP allowed: nobody gets an answer
    values = {
        "USER_DIRECTIVE": f"user {paths.user};" if paths.user else "# user: nginx's default",
        "PID_FILE": str(paths.pid_file),
        "LOG_DIR": str(paths.log_dir),
        "TEMP_DIR": str(paths.temp_dir),
        "MAX_BODY": paths.max_body,
        "ALLOW_MAP": _entry_lines(allow),
        "ROUTE_TAG": ROUTE_TAG,
        "ROUTE_MAP": _entry_lines(routing.route_map),
        "UPSTREAMS": "\n".join(routing.upstreams),
        "UPSTREAM_TRIES": str(routing.tries),
        "LISTEN": _entry_lines(listen),
        "TLS": _entry_lines(tls_lines),
    }
    found = set(PLACEHOLDER.findall(template))
    if found != set(values):
        missing = sorted(set(values) - found)
        unknown = sorted(found - set(values))
        raise TemplateError(f"nginx template placeholders: missing {missing}, unknown {unknown}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (nginx's workers)."""
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            kids.add(int(entry))
    return kids


class Nginx:
    """The gateway's nginx: render, check, install, reload (or start)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._binary = settings.nginx.binary
        self.config_path = settings.nginx_config
        self.pid_file = settings.nginx_pid_file
        self.tls_dir = settings.tls_path
        self.paths = RenderPaths(
            pid_file=settings.nginx_pid_file,
            log_dir=settings.nginx_log_dir,
            temp_dir=settings.nginx_temp_dir,
            user=settings.nginx.user,
            max_body=settings.nginx.max_body,
            listen_host=settings.nginx.listen_host,
            http_port=settings.http_port,
        )

    def render(self, config: GatewayConfig | None) -> str:
        template = self._settings.nginx.template.read_text("utf-8")
        return render(template, config, self.paths, ingress_files(config, self.tls_dir))

    def _prepare_dirs(self) -> None:
        for directory in (self.config_path.parent, self.paths.log_dir, self.paths.temp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)

    async def check(self, text: str) -> None:
        """``nginx -t`` on ``text``, written beside the live config. Raises NginxCheckFailed."""
        self._prepare_dirs()
        candidate = self.config_path.with_name(self.config_path.name + ".candidate")
        _write(candidate, text)
        try:
            await run([self._binary, "-t", "-q", "-c", str(candidate)])
        except CommandFailed as exc:
            raise NginxCheckFailed(exc.detail) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()

    def master_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    async def install(self, text: str) -> None:
        """Swap ``text`` in (it passed :meth:`check`) and reload, or start nginx.

        If the reload fails, the previous file is put back and nginx reloaded with it.
        """
        previous = self.config_path.read_text("utf-8") if self.config_path.exists() else None
        _write(self.config_path, text)
        try:
            await self._reload_or_start()
        except CommandFailed:
            if previous is not None:
                _write(self.config_path, previous)
                with contextlib.suppress(CommandFailed):
                    await self._reload_or_start()
            raise

    async def _reload_or_start(self) -> None:
        pid = self.master_pid()
        if pid is None:
            if not self._settings.nginx.start_if_stopped:
                raise CommandFailed("nginx", "not running (and start_if_stopped is off)")
            await run([self._binary, "-c", str(self.config_path)])
            logger.info("nginx started")
            return
        before = _children(pid)
        await run([self._binary, "-c", str(self.config_path), "-s", "reload"])
        # The master checks the new config and starts new workers; when one is up, the
        # new allow-map is what new connections meet. Old workers finish their streams.
        deadline = time.monotonic() + RELOAD_WAIT_SECONDS
        while time.monotonic() < deadline:
            if _children(pid) - before:
                logger.info("nginx reloaded")
                return
            await asyncio.sleep(0.05)
        raise CommandFailed("nginx", "reload signalled but no new worker started (see error.log)")

    async def stop(self) -> None:
        if self.master_pid() is not None:
            await run([self._binary, "-c", str(self.config_path), "-s", "quit"], check=False)
