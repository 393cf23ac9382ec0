"""The gateway config: what the control plane tells a gateway's agent to apply.

A gateway terminates the clients' WireGuard tunnels and proxies their HTTP to the data
plane through nginx. Its config lists the WireGuard peers (public key, sealed preshared
key, tunnel addresses, enabled), the nginx allow-list derived from them, and the
data-plane upstreams. It travels in the same signed envelope as a node's config
(``shared.envelope``, typ ``sanctum-gateway-config+jws``): the agent applies it only if
the control plane signed it, it names this gateway, and its version is higher than the
one held.

Preshared keys are secrets, and a JWS is signed, not encrypted: anyone who can read the
management link, the control plane's release table or the agent's saved copy would
otherwise hold every peer's PSK. So each PSK is *sealed* to the gateway's WireGuard
public key (an X25519 key) with HPKE (RFC 9180), from the ``cryptography`` package:
base mode, single-shot, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
ChaCha20-Poly1305 (KEM 0x0020, KDF 0x0001, AEAD 0x0003). Only the holder of the
gateway's WireGuard private key (which never leaves the gateway) can open them. Disabled
peers travel without a PSK at all.

The sealed form is ``v2.<enc>.<ciphertext>``, both parts unpadded base64url: ``enc`` is
HPKE's encapsulated key (the sender's ephemeral X25519 public key, 32 bytes) and
``ciphertext`` is the ChaCha20-Poly1305 output (the 32-byte PSK and a 16-byte tag). The
HPKE ``info`` is ``sanctum-sealed-secret-v2``, a zero byte, then the caller's context;
for a PSK the context is ``sanctum-gateway-psk``, the gateway's name and the peer's raw
public key, zero-separated (:func:`psk_context`), so a sealed PSK moved to another peer
or gateway does not open. ``info`` enters HPKE's key schedule, so the binding holds
without associated data (the AEAD's ``aad`` is empty). The recipient's public key is
bound by the KEM itself.

``v1`` (before HPKE: a construction of our own from the same primitives) is no longer
read. Nothing stored needs it: the control plane keeps each peer's PSK and seals it
anew into every release, so its next release to a gateway carries ``v2``; a ``v1``
config (an old saved copy, an old release) is refused as malformed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared import envelope
from shared.backbone import BackboneInterface, check_upstreams
from shared.canonical import CanonicalEncodingError, b64urldecode_canonical
from shared.config import Name
from shared.keys import Signer, b64url
from shared.pki import TlsMaterial
from shared.release import Release
from shared.trust import KeySet
from shared.wireguard import (
    INTERFACE_NAME,
    WireGuardKey,
    encode_key,
    key_bytes,
    private_key_object,
    public_key_object,
)

MAX_PEERS = 65_536
SEALED_VERSION = "v2"
# RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_ENC_LENGTH = 32  # Nenc of DHKEM(X25519, HKDF-SHA256): the ephemeral public key
_HPKE_INFO = b"sanctum-sealed-secret-v2"
_SEALED_FORM = f"sealed secret must be {SEALED_VERSION}.<enc>.<ciphertext>"
_PSK_CONTEXT = b"sanctum-gateway-psk"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class SealError(ValueError):
    """A sealed secret is malformed or does not open with this key and context."""


# --- sealing secrets to the gateway's WireGuard key ------------------------------------


def _info(context: bytes) -> bytes:
    """HPKE's ``info``: what the sealed secret is for, then the caller's context."""
    return _HPKE_INFO + b"\x00" + context


def seal_secret(secret: bytes, recipient_public_key: str, *, context: bytes) -> str:
    """Encrypt ``secret`` so only the holder of the recipient's private key opens it.

    HPKE draws a fresh ephemeral key per call, so the same secret never seals to the
    same text. ``context`` goes into HPKE's ``info``: opening needs the same context.
    """
    recipient = public_key_object(recipient_public_key)
    try:
        sealed = _SUITE.encrypt(secret, recipient, info=_info(context))
    except ValueError:  # a low-order point: the agreement would be all zeros
        raise SealError("recipient public key is not usable for key agreement") from None
    enc, ciphertext = sealed[:_ENC_LENGTH], sealed[_ENC_LENGTH:]
    return f"{SEALED_VERSION}.{b64url(enc)}.{b64url(ciphertext)}"


def open_secret(sealed: str, recipient_private_key: str, *, context: bytes) -> bytes:
    """Open what :func:`seal_secret` made. Raises :class:`SealError` (never quotes it)."""
    parts = sealed.split(".") if isinstance(sealed, str) else []
    if len(parts) != 3 or parts[0] != SEALED_VERSION:
        raise SealError(_SEALED_FORM)
    try:
        enc = b64urldecode_canonical(parts[1], length=_ENC_LENGTH, what="encapsulated key")
        ciphertext = b64urldecode_canonical(parts[2], what="ciphertext")
    except CanonicalEncodingError as exc:
        raise SealError(str(exc)) from None
    private = private_key_object(recipient_private_key)
    try:
        return _SUITE.decrypt(enc + ciphertext, private, info=_info(context))
    except (InvalidTag, ValueError):
        raise SealError("sealed secret does not open with this key and context") from None


def psk_context(gateway: str, peer_public_key: str) -> bytes:
    """What a peer's sealed PSK is bound to: this gateway and this peer."""
    return b"\x00".join(
        [_PSK_CONTEXT, gateway.encode("utf-8"), key_bytes(peer_public_key, "peer public key")]
    )


def seal_preshared_key(
    preshared_key: str, *, gateway: str, gateway_public_key: str, peer_public_key: str
) -> str:
    """Seal a peer's PSK (``wg genpsk`` form) to the gateway's WireGuard public key."""
    raw = key_bytes(preshared_key, "preshared key")
    return seal_secret(raw, gateway_public_key, context=psk_context(gateway, peer_public_key))


def open_preshared_key(
    sealed: str, *, gateway: str, gateway_private_key: str, peer_public_key: str
) -> str:
    """The PSK in ``wg`` form; raises :class:`SealError` if it does not open."""
    raw = open_secret(sealed, gateway_private_key, context=psk_context(gateway, peer_public_key))
    if len(raw) != 32:
        raise SealError("sealed preshared key is not 32 bytes")
    return encode_key(raw)


# --- addresses -------------------------------------------------------------------------


def _host_network(value: str) -> str:
    """A single address as a host network, canonical text (``10.0.0.2/32``)."""
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        raise ValueError("not an IP address") from None
    if net.num_addresses != 1:
        raise ValueError("a tunnel address is one address (/32 or /128)")
    return str(net)


def _interface_address(value: str) -> str:
    """An address with its prefix (``10.77.0.1/24``), canonical text."""
    try:
        iface = ipaddress.ip_interface(str(value))
    except ValueError:
        raise ValueError("not an IP address with a prefix length") from None
    if "/" not in str(value):
        raise ValueError("give the prefix length, like 10.77.0.1/24")
    return str(iface)


def _upstream_host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError("not an IP address or a host name")
    return value.lower()


def _interface_name(value: str) -> str:
    if not INTERFACE_NAME.match(value):
        raise ValueError("not a Linux interface name (1-15 of A-Z a-z 0-9 _ = + . -)")
    return value


def _sealed(value: str) -> str:
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != SEALED_VERSION:
        if parts[0] == "v1":
            raise ValueError(
                "sealed secret is v1, which is no longer read: the control plane's next "
                "release seals it as v2"
            )
        raise ValueError(_SEALED_FORM)
    return value


HostNetwork = Annotated[str, AfterValidator(_host_network)]
InterfaceAddress = Annotated[str, AfterValidator(_interface_address)]
InterfaceName = Annotated[str, AfterValidator(_interface_name)]
UpstreamHost = Annotated[str, AfterValidator(_upstream_host)]
SealedSecret = Annotated[str, AfterValidator(_sealed)]


# --- the contract ----------------------------------------------------------------------


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WireGuardInterface(_Contract):
    """The gateway's tunnel interface. Its private key stays on the gateway."""

    name: InterfaceName = "wg0"
    public_key: WireGuardKey = Field(description="the gateway's; PSKs are sealed to it")
    listen_port: int = Field(default=51820, ge=1, le=65535)
    addresses: tuple[InterfaceAddress, ...] = Field(
        min_length=1, description="the gateway's tunnel addresses with the pool's prefix"
    )
    mtu: int | None = Field(default=None, ge=1280, le=9000)

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_interface(a).network for a in self.addresses]

    def hosts(self) -> list[str]:
        """The gateway's own tunnel addresses (where nginx answers peers)."""
        return [str(ipaddress.ip_interface(a).ip) for a in self.addresses]


class GatewayPeer(_Contract):
    """A client's WireGuard peer on this gateway."""

    id: Name = Field(description="the control plane's peer id, for logs and health")
    client: Name = Field(description="the client's id")
    public_key: WireGuardKey
    preshared_key: SealedSecret | None = Field(
        default=None, description="sealed to the gateway's key; null for disabled peers"
    )
    addresses: tuple[HostNetwork, ...] = Field(min_length=1, max_length=4)
    enabled: bool = True
    pool: Name | None = Field(
        default=None, description="its client's node pool: the upstreams it is routed to"
    )


class Upstream(_Contract):
    """A data-plane node's client API, as the gateway reaches it."""

    node: Name
    host: UpstreamHost
    port: int = Field(ge=1, le=65535)
    pool: Name | None = Field(default=None, description="the node's pool")
    draining: bool = Field(
        default=False, description="no new sessions; the sessions it holds still reach it"
    )

    @property
    def address(self) -> str:
        """``host:port`` as nginx writes it (IPv6 literals in brackets)."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def derive_allow_list(peers: Iterable[GatewayPeer]) -> tuple[str, ...]:
    """The nginx allow-list: every enabled peer's tunnel addresses, sorted."""
    return tuple(
        sorted(
            {a for p in peers if p.enabled for a in p.addresses},
            key=lambda a: (ipaddress.ip_network(a).version, ipaddress.ip_network(a)),
        )
    )


class GatewayConfig(Release):
    """Version ``version`` of one gateway's config (``shared.release``: versions only go
    up, it expires, and it carries the keys the gateway trusts)."""

    gateway: Name
    interface: WireGuardInterface
    http_port: int = Field(default=80, ge=1, le=65535, description="nginx, on the tunnel")
    https_port: int = Field(default=443, ge=1, le=65535, description="nginx's TLS port")
    plain_http: bool = Field(
        default=False, description="serve plain HTTP on the tunnel too (an admin's choice)"
    )
    peers: tuple[GatewayPeer, ...] = Field(default=(), max_length=MAX_PEERS)
    upstreams: tuple[Upstream, ...] = ()
    allow: tuple[HostNetwork, ...] = Field(
        default=(), description="derived from the enabled peers; checked on open"
    )
    backbone: BackboneInterface | None = Field(
        default=None, description="the nodes it fronts, over WireGuard; upstreams must be on it"
    )

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        keys = [p.public_key for p in self.peers]
        if len(keys) != len(set(keys)):
            raise ValueError("peer public keys must be unique")
        if self.interface.public_key in keys:
            raise ValueError("a peer can't have the gateway's own public key")
        ids = [p.id for p in self.peers]
        if len(ids) != len(set(ids)):
            raise ValueError("peer ids must be unique")
        seen: set[str] = set()
        networks = self.interface.networks()
        own = set(self.interface.hosts())
        for peer in self.peers:
            for address in peer.addresses:
                ip = ipaddress.ip_network(address).network_address
                if address in seen:
                    raise ValueError(f"tunnel address {address} is given to two peers")
                seen.add(address)
                if str(ip) in own:
                    raise ValueError(f"tunnel address {address} is the gateway's own")
                if not any(ip in net for net in networks):
                    raise ValueError(f"tunnel address {address} is outside the interface's")
            if peer.enabled and peer.preshared_key is None:
                raise ValueError(f"enabled peer {peer.id} has no preshared key")
        if tuple(self.allow) != derive_allow_list(self.peers):
            raise ValueError("allow must be the enabled peers' tunnel addresses")
        nodes = [u.node for u in self.upstreams]
        if len(nodes) != len(set(nodes)):
            raise ValueError("upstream nodes must be unique")
        if self.backbone is not None:
            check_upstreams(self.backbone, {u.node: u.host for u in self.upstreams})
        return self

    @classmethod
    def create(
        cls,
        *,
        version: int,
        issued_at: datetime,
        expires_at: datetime,
        trust: KeySet,
        gateway: str,
        interface: WireGuardInterface,
        peers: Sequence[GatewayPeer] = (),
        upstreams: Sequence[Upstream] = (),
        http_port: int = 80,
        https_port: int = 443,
        plain_http: bool = False,
        tls: TlsMaterial | None = None,
        backbone: BackboneInterface | None = None,
    ) -> GatewayConfig:
        """The config with its allow-list derived from ``peers``."""
        return cls(
            version=version,
            issued_at=issued_at,
            expires_at=expires_at,
            trust=trust,
            gateway=gateway,
            interface=interface,
            http_port=http_port,
            https_port=https_port,
            plain_http=plain_http,
            tls=tls,
            peers=tuple(peers),
            upstreams=tuple(upstreams),
            allow=derive_allow_list(peers),
            backbone=backbone,
        )

    @property
    def target(self) -> str:
        return self.gateway

    def enabled_peers(self) -> list[GatewayPeer]:
        return [p for p in self.peers if p.enabled]

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def tunnel_ports(config: GatewayConfig) -> list[int]:
    """The ports nginx serves peers on: TLS always, plain HTTP only when turned on."""
    return [config.https_port, *([config.http_port] if config.plain_http else [])]


def make_peer(
    *,
    id: str,
    client: str,
    public_key: str,
    addresses: Sequence[str],
    enabled: bool,
    preshared_key: str | None,
    gateway: str,
    gateway_public_key: str,
    pool: str | None = None,
) -> GatewayPeer:
    """A peer for the config, its PSK sealed to the gateway (and left out if disabled)."""
    sealed = None
    if enabled and preshared_key is not None:
        sealed = seal_preshared_key(
            preshared_key,
            gateway=gateway,
            gateway_public_key=gateway_public_key,
            peer_public_key=public_key,
        )
    return GatewayPeer(
        id=id,
        client=client,
        public_key=public_key,
        preshared_key=sealed,
        addresses=tuple(addresses),
        enabled=enabled,
        pool=pool,
    )


def sign_gateway_config(config: GatewayConfig, key: Signer) -> str:
    """The config in its signed envelope, ready for the agent's ``PUT /internal/config``."""
    return envelope.sign(config.document(), key, envelope.TYP_GATEWAY_CONFIG)


def open_gateway_config(token: str | bytes, trusted: Any) -> GatewayConfig:
    """Verify the envelope and parse the config (raises EnvelopeError / ValidationError)."""
    return GatewayConfig.model_validate(
        envelope.verify(token, trusted, envelope.TYP_GATEWAY_CONFIG)
    )
