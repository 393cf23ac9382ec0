"""The backbone: the WireGuard network between gateways and data-plane nodes.

Clients' tunnels end at a gateway; from there nginx proxies their requests to a node.
That hop carries prompts, answers and session documents, so it runs inside a second
WireGuard network, the backbone, as the specification draws it (``Regional PoP
--WireGuard--> Private Backbone --> GPU Cluster``). Each gateway and each node is a
member: its own key pair (the private key never leaves the machine), one address from
the control plane's backbone pool, and, for a node, the underlay ``host:port`` the
gateways send their WireGuard packets to. A node's client API listens on its backbone
address only, and nginx proxies to backbone addresses only.

Both signed configs carry a :class:`BackboneInterface`: a gateway's lists the nodes it
fronts (with their endpoints: the gateway starts the handshake), a node's lists the
gateways that front it (no endpoint: the node answers and never initiates). A peer's
allowed IPs are its one backbone address, so a member can only send as itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.release import Name
from shared.wireguard import DEFAULT_KEEPALIVE_SECONDS, INTERFACE_NAME, WireGuardKey

DEFAULT_INTERFACE = "sanctum-bb"
DEFAULT_PORT = 51821


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackbonePeer(_Contract):
    """Another member, as this one sees it."""

    name: Name = Field(description="the node's or the gateway's name")
    public_key: WireGuardKey
    address: str = Field(description="its one backbone address (no prefix)")
    endpoint: str | None = Field(
        default=None, description="underlay host:port to send to; None: wait for it to call"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("not an IP address") from None

    @property
    def allowed_ip(self) -> str:
        return str(ipaddress.ip_network(self.address))


class BackboneInterface(_Contract):
    """This member's backbone interface: its address and the peers it may talk to."""

    name: str = DEFAULT_INTERFACE
    public_key: WireGuardKey = Field(description="this member's own (checked on apply)")
    address: str = Field(description="this member's address with the pool's prefix")
    listen_port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    peers: tuple[BackbonePeer, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not INTERFACE_NAME.match(value):
            raise ValueError("not a Linux interface name")
        return value

    @field_validator("address")
    @classmethod
    def _interface(cls, value: str) -> str:
        if "/" not in value:
            raise ValueError("give the prefix length, like 10.90.0.2/24")
        try:
            return str(ipaddress.ip_interface(value))
        except ValueError:
            raise ValueError("not an IP address with a prefix length") from None

    @model_validator(mode="after")
    def _consistent(self) -> BackboneInterface:
        network = ipaddress.ip_interface(self.address).network
        seen = {self.host}
        keys = {self.public_key}
        for peer in self.peers:
            if ipaddress.ip_address(peer.address) not in network:
                raise ValueError(f"backbone peer {peer.name} is outside {network}")
            if peer.address in seen or peer.public_key in keys:
                raise ValueError(f"backbone peer {peer.name} repeats an address or a key")
            seen.add(peer.address)
            keys.add(peer.public_key)
        return self

    @property
    def host(self) -> str:
        """This member's backbone address without the prefix."""
        return str(ipaddress.ip_interface(self.address).ip)

    def peer_addresses(self) -> dict[str, str]:
        """Each peer's name to its backbone address."""
        return {p.name: p.address for p in self.peers}


def render_syncconf(backbone: BackboneInterface, private_key: str) -> str:
    """The ``wg syncconf`` text for the backbone interface (holds the private key: it
    only ever travels through a pipe)."""
    lines = [
        "[Interface]",
        f"PrivateKey = {private_key}",
        f"ListenPort = {backbone.listen_port}",
    ]
    for peer in backbone.peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
        lines.append(f"AllowedIPs = {peer.allowed_ip}")
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
            # The initiator keeps the path warm, so a node's answer never waits on a
            # handshake (and stateful firewalls between them keep the flow).
            lines.append(f"PersistentKeepalive = {DEFAULT_KEEPALIVE_SECONDS}")
    return "\n".join(lines) + "\n"


def check_upstreams(backbone: BackboneInterface, upstreams: Mapping[str, str]) -> None:
    """Every upstream (node name -> host) must be that node's backbone address."""
    addresses = backbone.peer_addresses()
    for node, host in upstreams.items():
        if addresses.get(node) != host:
            raise ValueError(f"upstream {node} is not at its backbone address")
