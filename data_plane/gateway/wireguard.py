"""WireGuard interfaces: peers applied with ``wg syncconf``, status read back.

The gateway drives two (the clients' tunnels and the backbone), a node one (the
backbone, ``shared.backbone``).

``wg syncconf`` changes only what differs: peers that stay keep their sessions and their
traffic flows on, removed peers lose their keys at once, and the interface itself is
never torn down. The interface is created at boot (infra/scripts/wireguard-interface.sh);
the agent only refuses to run against one that is missing.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from data_plane.gateway.commands import CommandFailed, run
from shared.backbone import BackboneInterface
from shared.backbone import render_syncconf as render_backbone
from shared.gateway import GatewayConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerStatus:
    """One peer as ``wg show dump`` reports it (no keys but the public one)."""

    public_key: str
    latest_handshake: int | None  # Unix time; None: never
    rx_bytes: int
    tx_bytes: int
    allowed_ips: tuple[str, ...]


@dataclass(frozen=True)
class InterfaceStatus:
    name: str
    ifindex: int
    public_key: str
    listen_port: int
    peers: tuple[PeerStatus, ...]


def render_syncconf(
    config: GatewayConfig, private_key: str, preshared_keys: Mapping[str, str]
) -> str:
    """The ``wg syncconf`` text: the interface's key and port, every enabled peer.

    It holds the private key and the PSKs, so it only ever travels through a pipe.
    """
    lines = [
        "[Interface]",
        f"PrivateKey = {private_key}",
        f"ListenPort = {config.interface.listen_port}",
    ]
    for peer in config.enabled_peers():
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
        psk = preshared_keys.get(peer.public_key)
        if psk:
            lines.append(f"PresharedKey = {psk}")
        lines.append(f"AllowedIPs = {', '.join(peer.addresses)}")
    return "\n".join(lines) + "\n"


def parse_dump(name: str, ifindex: int, text: str) -> InterfaceStatus:
    """Parse ``wg show IFACE dump`` (tab-separated; the first line is the interface)."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or len(rows[0]) < 3:
        raise ValueError("wg dump has no interface line")
    head = rows[0]
    peers = []
    for row in rows[1:]:
        if len(row) < 7:
            continue
        # public-key preshared-key endpoint allowed-ips latest-handshake rx tx keepalive
        handshake = int(row[4]) if row[4].isdigit() else 0
        allowed = tuple(a for a in row[3].split(",") if a and a != "(none)")
        peers.append(
            PeerStatus(
                public_key=row[0],
                latest_handshake=handshake or None,
                rx_bytes=int(row[5]) if row[5].isdigit() else 0,
                tx_bytes=int(row[6]) if row[6].isdigit() else 0,
                allowed_ips=allowed,
            )
        )
    port = int(head[2]) if head[2].isdigit() else 0
    return InterfaceStatus(
        name=name, ifindex=ifindex, public_key=head[1], listen_port=port, peers=tuple(peers)
    )


class InterfaceMissing(RuntimeError):
    """The WireGuard interface does not exist (boot provisioning has not run)."""


class Tools(Protocol):
    """Where the ``wg`` and ``ip`` tools are (a settings section)."""

    wg_binary: str
    ip_binary: str


class WireGuard:
    """Drives WireGuard interfaces through the ``wg`` and ``ip`` tools."""

    def __init__(self, settings: Tools) -> None:
        self._wg = settings.wg_binary
        self._ip = settings.ip_binary

    @staticmethod
    def ifindex(name: str) -> int:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            raise InterfaceMissing(f"interface {name} does not exist") from None

    async def sync(
        self, config: GatewayConfig, private_key: str, preshared_keys: Mapping[str, str]
    ) -> None:
        """Make the interface match ``config``: peers, port, addresses, link up."""
        iface = config.interface.name
        text = render_syncconf(config, private_key, preshared_keys)
        await self._sync(iface, text, config.interface.addresses, config.interface.mtu)
        logger.info("wireguard synced interface=%s peers=%d", iface, len(config.enabled_peers()))

    async def sync_backbone(self, backbone: BackboneInterface, private_key: str) -> None:
        """Make the backbone interface match: its peers, port and address, link up."""
        text = render_backbone(backbone, private_key)
        await self._sync(backbone.name, text, (backbone.address,), None)
        logger.info("backbone synced interface=%s peers=%d", backbone.name, len(backbone.peers))

    async def _sync(
        self, iface: str, text: str, addresses: tuple[str, ...], mtu: int | None
    ) -> None:
        self.ifindex(iface)
        await run(
            [self._wg, "syncconf", iface, "/dev/stdin"],
            input=text.encode("ascii"),
            secret_input=True,
        )
        await self._sync_addresses(iface, addresses)
        link = [self._ip, "link", "set", "dev", iface]
        if mtu:
            link += ["mtu", str(mtu)]
        await run([*link, "up"])

    async def down(self, iface: str) -> None:
        """Take the interface down: no peer gets through it (a last resort)."""
        await run([self._ip, "link", "set", "dev", iface, "down"])
        logger.warning("wireguard interface=%s taken down", iface)

    async def _addresses(self, iface: str) -> set[str]:
        out = await run([self._ip, "-o", "address", "show", "dev", iface, "scope", "global"])
        have = set()
        for line in out.stdout.splitlines():
            parts = line.split()
            for i, word in enumerate(parts[:-1]):
                if word in ("inet", "inet6"):
                    have.add(str(ipaddress.ip_interface(parts[i + 1])))
        return have

    async def _add_address(self, iface: str, address: str) -> None:
        # No duplicate address detection on a tunnel: the address is usable (nginx can
        # bind it) at once, not seconds later.
        extra = ["nodad"] if ipaddress.ip_interface(address).version == 6 else []
        await run([self._ip, "address", "add", address, "dev", iface, *extra])

    async def add_addresses(self, iface: str, wanted: tuple[str, ...]) -> None:
        """Give ``iface`` the addresses it lacks (peers untouched): nginx binds them."""
        self.ifindex(iface)
        have = await self._addresses(iface)
        for address in sorted({str(ipaddress.ip_interface(a)) for a in wanted} - have):
            await self._add_address(iface, address)

    async def _sync_addresses(self, iface: str, wanted: tuple[str, ...]) -> None:
        have = await self._addresses(iface)
        want = {str(ipaddress.ip_interface(a)) for a in wanted}
        for address in sorted(want - have):
            await self._add_address(iface, address)
        for address in sorted(have - want):
            await run([self._ip, "address", "del", address, "dev", iface])

    async def status(self, iface: str) -> InterfaceStatus:
        index = self.ifindex(iface)
        try:
            out = await run([self._wg, "show", iface, "dump"])
        except CommandFailed:
            raise InterfaceMissing(f"interface {iface} is not a WireGuard interface") from None
        # The first line holds the private key: parse it and drop the text at once.
        return parse_dump(iface, index, out.stdout)
