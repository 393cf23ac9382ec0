"""Gateways, their address pools, client peers, and gateway config releases."""

from __future__ import annotations

import ipaddress
from datetime import datetime

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from control_plane.changes.models import ChangeLoggedModel
from control_plane.clients.models import Client
from control_plane.clients.validators import bundle_name_validator
from control_plane.core.models import Release, RolloutTarget, TargetState
from control_plane.fleet.models import Node, validate_public_key_pem
from control_plane.network.allocation import gateway_address
from control_plane.network.choices import PeerStatus, PoolPurpose
from control_plane.network.querysets import GatewayQuerySet, GatewayReleaseQuerySet, PeerQuerySet
from control_plane.network.validators import (
    validate_endpoint,
    validate_interface_name,
    validate_ipv4_network,
    validate_ipv6_network,
    validate_upstream_host,
    validate_wireguard_key,
)
from shared.pki import ip_addresses_of


class AddressPool(ChangeLoggedModel):
    """The tunnel addresses of one gateway: an IPv4 network and, optionally, an IPv6 one.

    The first host address of each is the gateway's own (where nginx answers its peers);
    the network address and the IPv4 broadcast address are never handed out. A pool
    whose purpose is *backbone* holds the addresses of the backbone's members instead
    (gateways and nodes, :class:`BackboneMember`; IPv4 only).
    """

    name = models.CharField(max_length=128, unique=True, validators=[bundle_name_validator])
    purpose = models.CharField(
        max_length=16, choices=PoolPurpose.choices, default=PoolPurpose.TUNNEL
    )
    ipv4_cidr = models.CharField(
        "IPv4 network", max_length=18, validators=[validate_ipv4_network], help_text="10.77.0.0/24"
    )
    ipv6_cidr = models.CharField(
        "IPv6 network",
        max_length=43,
        blank=True,
        validators=[validate_ipv6_network],
        help_text="fd77::/64 (optional)",
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    change_logged_fields = ("name", "purpose", "ipv4_cidr", "ipv6_cidr", "description")

    class Meta:
        ordering = ("name",)
        verbose_name = "address pool"

    def __str__(self) -> str:
        return self.name

    @property
    def ipv4_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.ipv4_cidr)

    @property
    def ipv6_network(self) -> ipaddress.IPv6Network | None:
        return ipaddress.IPv6Network(self.ipv6_cidr) if self.ipv6_cidr else None

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [n for n in (self.ipv4_network, self.ipv6_network) if n is not None]

    def gateway_addresses(self) -> list[str]:
        """The gateway's tunnel addresses (``10.77.0.1``, ``fd77::1``)."""
        return [str(gateway_address(n)) for n in self.networks()]

    def gateway_interfaces(self) -> list[str]:
        """The same with the pool's prefix (``10.77.0.1/24``): the interface's addresses."""
        return [f"{gateway_address(n)}/{n.prefixlen}" for n in self.networks()]


def overlapping_pool(cidr: str, *, exclude: int | None = None) -> AddressPool | None:
    """A pool (other than ``exclude``) whose networks overlap ``cidr``, if any."""
    if not cidr:
        return None
    network = ipaddress.ip_network(cidr, strict=False)
    pools = (
        AddressPool.objects.all() if exclude is None else AddressPool.objects.exclude(pk=exclude)
    )
    for pool in pools:
        if any(n.version == network.version and n.overlaps(network) for n in pool.networks()):
            return pool
    return None


class Gateway(RolloutTarget):
    """A WireGuard gateway: where clients connect, its key, and its agent's address.

    Its WireGuard private key never leaves the gateway; the public key here is what
    clients put in their config and what each peer's preshared key is sealed to.
    """

    name = models.CharField(
        max_length=128,
        unique=True,
        validators=[bundle_name_validator],
        help_text="The gateway's name; its agent takes configs made for this name only.",
    )
    public_endpoint = models.CharField(
        max_length=300,
        validators=[validate_endpoint],
        help_text="host:port clients send WireGuard to, like gw1.example.net:51820.",
    )
    public_key = models.CharField(
        "WireGuard public key",
        max_length=44,
        unique=True,
        validators=[validate_wireguard_key],
        help_text="The gateway's (printed by gateway-provision.sh).",
    )
    management_url = models.URLField(
        "management URL", help_text="Base URL of the gateway agent, on the management link."
    )
    signing_key = models.TextField(
        "signing public key (PEM)",
        blank=True,
        validators=[validate_public_key_pem],
        help_text="The gateway's Ed25519 public key (gateway.pub, printed by "
        "gateway-provision.sh): its health answers are believed only when it signed them.",
    )
    pool = models.OneToOneField(
        AddressPool,
        on_delete=models.PROTECT,
        related_name="gateway",
        verbose_name="address pool",
        limit_choices_to={"purpose": PoolPurpose.TUNNEL},
    )
    interface_name = models.CharField(
        max_length=15, default="wg0", validators=[validate_interface_name]
    )
    listen_port = models.PositiveIntegerField(
        default=51820, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    http_port = models.PositiveIntegerField(
        "HTTP port",
        default=80,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="nginx's plain-HTTP port on the tunnel address (used only with plain HTTP on).",
    )
    https_port = models.PositiveIntegerField(
        "HTTPS port",
        default=443,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="nginx's TLS port on the gateway's tunnel address.",
    )
    plain_http = models.BooleanField(
        "plain HTTP on the tunnel",
        default=False,
        help_text="Also serve plain HTTP on the tunnel address. Off: clients speak TLS "
        "(the ingress certificate) inside their tunnel, as they should.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled gateways get no rollouts.")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = GatewayQuerySet.as_manager()

    change_logged_fields = (
        "name",
        "public_endpoint",
        "public_key",
        "management_url",
        "signing_key",
        "pool",
        "interface_name",
        "listen_port",
        "http_port",
        "https_port",
        "plain_http",
        "enabled",
        "description",
    )

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    @property
    def api_base(self) -> str:
        """The data-plane API as a peer reaches it through this gateway."""
        address = self.pool.gateway_addresses()[0]
        if self.plain_http:
            port = "" if self.http_port == 80 else f":{self.http_port}"
            return f"http://{address}{port}/v1"
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{address}{port}/v1"

    def tunnel_addresses(self) -> list[str]:
        """The gateway's own tunnel addresses: the IP SANs of its ingress certificate."""
        return ip_addresses_of(self.pool.gateway_interfaces())


class GatewayUpstream(ChangeLoggedModel):
    """A data-plane node's client API as the gateway's nginx reaches it."""

    gateway = models.ForeignKey(Gateway, on_delete=models.CASCADE, related_name="upstreams")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gateway_upstreams")
    host = models.CharField(
        max_length=253, validators=[validate_upstream_host], help_text="IP address or host name."
    )
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)])

    change_logged_fields = ("gateway", "node", "host", "port")

    class Meta:
        ordering = ("gateway", "node__name")
        verbose_name = "upstream"
        constraints = [
            models.UniqueConstraint(fields=["gateway", "node"], name="network_upstream_node")
        ]

    def __str__(self) -> str:
        return f"{self.node_id and self.node.name} at {self.host}:{self.port}"


class BackboneMember(ChangeLoggedModel):
    """A gateway or a node on the backbone (``shared.backbone``): its WireGuard public key,
    its address from a backbone pool, and for a node where the gateways send to.

    Its private key never leaves the machine. A gateway reaches the nodes it fronts only
    through the backbone once it is a member, and a member node's client API listens on
    its backbone address only.
    """

    pool = models.ForeignKey(
        AddressPool,
        on_delete=models.PROTECT,
        related_name="backbone_members",
        limit_choices_to={"purpose": PoolPurpose.BACKBONE},
        verbose_name="backbone pool",
    )
    gateway = models.OneToOneField(
        Gateway, on_delete=models.CASCADE, null=True, blank=True, related_name="backbone"
    )
    node = models.OneToOneField(
        Node, on_delete=models.CASCADE, null=True, blank=True, related_name="backbone"
    )
    public_key = models.CharField(
        "WireGuard public key",
        max_length=44,
        unique=True,
        validators=[validate_wireguard_key],
        help_text="The member's backbone key (``sanctum keys backbone`` prints it).",
    )
    address = models.GenericIPAddressField(
        "backbone address", protocol="IPv4", editable=False, help_text="From the pool."
    )
    endpoint = models.CharField(
        max_length=300,
        blank=True,
        validators=[validate_endpoint],
        help_text="host:port the gateways send WireGuard to, on the link between them "
        "(required for a node; a gateway calls, it is not called).",
    )
    listen_port = models.PositiveIntegerField(
        default=51821, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    interface_name = models.CharField(
        max_length=15, default="sanctum-bb", validators=[validate_interface_name]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    change_logged_fields = (
        "pool",
        "gateway",
        "node",
        "public_key",
        "address",
        "endpoint",
        "listen_port",
        "interface_name",
    )

    class Meta:
        ordering = ("pool", "address")
        verbose_name = "backbone member"
        constraints = [
            models.UniqueConstraint(fields=["pool", "address"], name="network_backbone_address"),
            models.CheckConstraint(
                condition=models.Q(gateway__isnull=True, node__isnull=False)
                | models.Q(gateway__isnull=False, node__isnull=True),
                name="network_backbone_one_member",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} at {self.address}"

    @property
    def name(self) -> str:
        member = self.node if self.node_id else self.gateway
        return member.name if member is not None else ""

    @property
    def interface_address(self) -> str:
        """Its address with the pool's prefix (``10.90.0.2/24``)."""
        return f"{self.address}/{self.pool.ipv4_network.prefixlen}"


class Peer(ChangeLoggedModel):
    """A client's WireGuard peer on a gateway: its public key, PSK and tunnel addresses.

    The private key is never here: either the client kept its own, or the control plane
    made the pair and showed the private key once, in the config it returned. The
    preshared key is stored (every gateway config carries it, sealed to the gateway's key)
    and never logged, listed or shown outside the config download.
    """

    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="peers")
    gateway = models.ForeignKey(Gateway, on_delete=models.PROTECT, related_name="peers")
    pool = models.ForeignKey(
        AddressPool, on_delete=models.PROTECT, related_name="peers", editable=False
    )
    name = models.CharField(max_length=100, blank=True, help_text="Which device, for whom.")
    public_key = models.CharField(
        "WireGuard public key", max_length=44, validators=[validate_wireguard_key]
    )
    preshared_key = models.CharField(max_length=44, editable=False)
    key_generated = models.BooleanField(
        default=False, editable=False, help_text="The control plane made the key pair."
    )
    address_v4 = models.GenericIPAddressField("IPv4 tunnel address", protocol="IPv4")
    address_v6 = models.GenericIPAddressField(
        "IPv6 tunnel address", protocol="IPv6", null=True, blank=True
    )
    enabled = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=200, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Reported by the gateway's health: machine-written, not change-logged.
    last_handshake_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PeerQuerySet.as_manager()

    # Never "preshared_key": the trail records metadata, not secrets.
    change_logged_fields = (
        "client",
        "gateway",
        "name",
        "public_key",
        "key_generated",
        "address_v4",
        "address_v6",
        "enabled",
        "expires_at",
        "disabled_reason",
        "disabled_at",
    )

    class Meta:
        ordering = ("gateway", "address_v4")
        constraints = [
            # The last line of defence behind the allocation lock.
            models.UniqueConstraint(fields=["pool", "address_v4"], name="network_peer_pool_v4"),
            models.UniqueConstraint(fields=["pool", "address_v6"], name="network_peer_pool_v6"),
            models.UniqueConstraint(fields=["gateway", "public_key"], name="network_peer_key"),
        ]

    def __str__(self) -> str:
        label = self.name or self.public_key[:8]
        return f"{self.client_id and self.client.slug}/{label} ({self.address_v4})"

    @property
    def config_id(self) -> str:
        """The peer's id in the gateway config and the gateway's health report."""
        return f"peer-{self.pk}"

    def addresses(self) -> list[str]:
        return [a for a in (self.address_v4, self.address_v6) if a]

    def status(self, at: datetime | None = None) -> str:
        at = at or timezone.now()
        if not self.enabled:
            return PeerStatus.DISABLED
        if self.expires_at is not None and self.expires_at <= at:
            return PeerStatus.EXPIRED
        if not self.client.is_active:
            return PeerStatus.CLIENT_INACTIVE
        return PeerStatus.ACTIVE


class GatewayState(TargetState):
    """What the control plane last learnt about a gateway (machine-written, not logged)."""

    target_field = "gateway"

    gateway = models.OneToOneField(
        Gateway, on_delete=models.CASCADE, primary_key=True, related_name="state"
    )

    class Meta:
        verbose_name = "gateway state"


class GatewayRelease(Release):
    """Version ``version`` of one gateway's config: the document, signed, and its delivery.

    The document holds each enabled peer's PSK sealed to the gateway's WireGuard key, so
    neither this table nor the management link exposes a usable one.
    """

    target_field = "gateway"

    gateway = models.ForeignKey(Gateway, on_delete=models.CASCADE, related_name="releases")
    document = models.JSONField(help_text="The gateway config (PSKs sealed).")

    objects = GatewayReleaseQuerySet.as_manager()

    change_logged_fields = ("gateway", "version", "document_sha256", "released_by")

    class Meta(Release.Meta):
        verbose_name = "gateway release"
        constraints = [
            models.UniqueConstraint(
                fields=["gateway", "version"], name="network_release_gateway_version"
            )
        ]

    @property
    def peer_count(self) -> int:
        return sum(1 for p in self.document.get("peers", []) if p.get("enabled"))
