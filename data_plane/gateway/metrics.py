"""The gateway's Prometheus metrics (docs/operations.md, "Metrics and health").

Read every ``refresh_seconds`` off the scrape path (``wg show`` is a subprocess): the
config in force, each peer's latest handshake and byte counts (labelled by the peer's
and its client's ids from the signed config, never by an address), whether nginx runs,
and nginx's answers by status, counted from ``status.log``, a log of one field (the
status) that nginx writes beside its access log for this purpose alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from data_plane.gateway.commands import CommandFailed
from data_plane.gateway.wireguard import InterfaceMissing

if TYPE_CHECKING:
    from data_plane.gateway.agent import GatewayAgent

logger = logging.getLogger(__name__)

STATUS_LOG = "status.log"
# WireGuard rekeys every 2 minutes while a tunnel carries traffic: a peer whose latest
# handshake is older than this has not talked lately.
CONNECTED_SECONDS = 180


@dataclass(frozen=True)
class PeerSample:
    peer: str
    client: str
    latest_handshake: int | None
    rx_bytes: int
    tx_bytes: int


@dataclass
class GatewayState:
    config_version: int | None = None
    peers_configured: int = 0
    nginx_running: bool = False
    interface_up: bool = False
    peers: list[PeerSample] = field(default_factory=list)
    read_at: float = 0.0


class StatusLog:
    """Counts nginx's answers by status from the lines appended to ``status.log`` since
    the last read; starts over when the file is rotated (another inode, or shorter)."""

    def __init__(self, path: Path, counter: Counter) -> None:
        self.path, self._counter = path, counter
        self._inode: int | None = None
        self._offset = 0

    def read(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if st.st_ino != self._inode or st.st_size < self._offset:
            first = self._inode is None
            self._inode, self._offset = st.st_ino, 0
            if first:  # answers from before the agent started are not counted twice
                self._offset = st.st_size
                return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(st.st_size - self._offset)
        complete = data.rfind(b"\n") + 1  # a line nginx is still writing waits
        self._offset += complete
        for line in data[:complete].split(b"\n"):
            status = line.strip()
            if len(status) == 3 and status.isdigit():
                self._counter.labels(status.decode()).inc()


class _StateCollector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self._metrics.state
        yield GaugeMetricFamily(
            "sanctum_gateway_config_version",
            "version of the signed config in force (-1: none)",
            value=-1 if state.config_version is None else state.config_version,
        )
        yield GaugeMetricFamily(
            "sanctum_gateway_peers",
            "enabled peers in the config in force",
            value=state.peers_configured,
        )
        connected = sum(
            1
            for p in state.peers
            if p.latest_handshake and state.read_at - p.latest_handshake < CONNECTED_SECONDS
        )
        yield GaugeMetricFamily(
            "sanctum_gateway_peers_connected",
            f"peers with a handshake in the last {CONNECTED_SECONDS} s",
            value=connected,
        )
        yield GaugeMetricFamily(
            "sanctum_gateway_nginx_up", "1 while nginx runs", value=int(state.nginx_running)
        )
        yield GaugeMetricFamily(
            "sanctum_gateway_interface_up",
            "1 while the clients' WireGuard interface answers",
            value=int(state.interface_up),
        )
        handshake = GaugeMetricFamily(
            "sanctum_gateway_peer_latest_handshake_timestamp_seconds",
            "a peer's latest handshake (0: never); its age is time() minus this",
            labels=["peer", "client"],
        )
        rx = CounterMetricFamily(
            "sanctum_gateway_peer_received_bytes", "bytes from a peer", labels=["peer", "client"]
        )
        tx = CounterMetricFamily(
            "sanctum_gateway_peer_sent_bytes", "bytes to a peer", labels=["peer", "client"]
        )
        for p in state.peers:
            labels = [p.peer, p.client]
            handshake.add_metric(labels, p.latest_handshake or 0)
            rx.add_metric(labels, p.rx_bytes)
            tx.add_metric(labels, p.tx_bytes)
        yield handshake
        yield rx
        yield tx
        yield GaugeMetricFamily(
            "sanctum_gateway_metrics_read_timestamp_seconds",
            "when WireGuard and nginx were last read",
            value=state.read_at,
        )


class GatewayMetrics:
    def __init__(self, log_dir: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter(
            "sanctum_gateway_nginx_responses",
            "nginx's answers by status (444: a source that is not a peer)",
            ["status"],
            registry=self.registry,
        )
        self.status_log = StatusLog(log_dir / STATUS_LOG, self.responses)
        self.state = GatewayState()
        self.registry.register(_StateCollector(self))

    async def refresh(self, agent: GatewayAgent) -> None:
        config = agent.store.current
        state = GatewayState(
            config_version=config.version if config else None,
            peers_configured=len(config.enabled_peers()) if config else 0,
            nginx_running=agent.nginx.master_pid() is not None,
            read_at=time.time(),
        )
        if config is not None:
            try:
                status = await agent.wireguard.status(config.interface.name)
            except (InterfaceMissing, CommandFailed):
                pass
            else:
                known = {p.public_key: p for p in config.peers}
                state.interface_up = True
                state.peers = [
                    PeerSample(
                        peer=known[p.public_key].id,
                        client=known[p.public_key].client,
                        latest_handshake=p.latest_handshake,
                        rx_bytes=p.rx_bytes,
                        tx_bytes=p.tx_bytes,
                    )
                    for p in status.peers
                    if p.public_key in known
                ]
        await asyncio.to_thread(self.status_log.read)
        self.state = state

    async def keep_fresh(self, agent: GatewayAgent, every: float) -> None:
        while True:
            try:
                await self.refresh(agent)
            except Exception:
                logger.exception("gateway metrics not read")
            await asyncio.sleep(every)
