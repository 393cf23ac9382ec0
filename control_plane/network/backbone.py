"""The backbone between gateways and nodes: joining it, and each member's view of it.

``join_backbone`` gives a gateway or a node an address from a backbone pool (under the
pool's row lock, as peers get theirs). ``gateway_backbone`` and ``node_backbone`` say
what each member's signed config holds (``shared.backbone.BackboneInterface``): a
gateway sees the enabled nodes it fronts, a node sees the gateways that front it.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError

from control_plane.core.errors import Conflict
from control_plane.fleet.models import Node
from control_plane.network.allocation import PoolExhausted, allocate
from control_plane.network.choices import PoolPurpose
from control_plane.network.models import AddressPool, BackboneMember, Gateway, GatewayUpstream
from control_plane.network.services import with_pool_lock
from shared.backbone import BackboneInterface, BackbonePeer

log = logging.getLogger(__name__)


def check_member(
    pool: AddressPool | None, *, node: Node | None, gateway: Gateway | None, endpoint: str
) -> None:
    """What a new member must be: a node or a gateway, on a backbone pool with room, and
    a node with the endpoint gateways send to (raises ``ValidationError``)."""
    if (node is None) == (gateway is None):
        raise ValidationError("A backbone member is either a node or a gateway.")
    if pool is None or pool.purpose != PoolPurpose.BACKBONE:
        raise ValidationError({"pool": "Choose a pool whose purpose is backbone."})
    if node is not None and not endpoint:
        raise ValidationError({"endpoint": "A node needs the host:port gateways send to."})
    used = BackboneMember.objects.filter(pool=pool).values_list("address", flat=True)
    try:
        allocate(pool.ipv4_network, used)
    except PoolExhausted as exc:
        raise ValidationError({"pool": f"{exc}: no backbone address left"}) from None


def join_backbone(
    pool: AddressPool,
    *,
    public_key: str,
    node: Node | None = None,
    gateway: Gateway | None = None,
    endpoint: str = "",
    listen_port: int = 51821,
    interface_name: str = "sanctum-bb",
) -> BackboneMember:
    """Make ``node`` or ``gateway`` a backbone member with the pool's next free address.

    Raises ``ValidationError`` for a pool that is not a backbone pool, a node without an
    endpoint or a bad key, and ``Conflict`` (409) when the pool is full.
    """
    check_member(pool, node=node, gateway=gateway, endpoint=endpoint)

    def create(locked: AddressPool) -> BackboneMember:
        used = BackboneMember.objects.filter(pool=locked).values_list("address", flat=True)
        try:
            address = allocate(locked.ipv4_network, used)
        except PoolExhausted as exc:
            raise Conflict(f"{exc}: no backbone address left", "pool_exhausted") from None
        member = BackboneMember(
            pool=locked,
            node=node,
            gateway=gateway,
            public_key=public_key.strip(),
            address=str(address),
            endpoint=endpoint,
            listen_port=listen_port,
            interface_name=interface_name,
        )
        member.full_clean()
        member.save()
        return member

    member = with_pool_lock(pool.pk, create)
    log.info("backbone member %s joined at %s", member.name, member.address)
    return member


def _interface(member: BackboneMember, peers: list[BackbonePeer]) -> BackboneInterface:
    return BackboneInterface(
        name=member.interface_name,
        public_key=member.public_key,
        address=member.interface_address,
        listen_port=member.listen_port,
        peers=tuple(peers),
    )


def _member(obj: Node | Gateway) -> BackboneMember | None:
    try:
        return obj.backbone
    except BackboneMember.DoesNotExist:
        return None


def gateway_backbone(gateway: Gateway) -> BackboneInterface | None:
    """The gateway's backbone, with each enabled node it fronts on the same pool."""
    own = _member(gateway)
    if own is None:
        return None
    nodes = BackboneMember.objects.filter(
        pool_id=own.pool_id,
        node__gateway_upstreams__gateway=gateway,
        node__enabled=True,
    ).select_related("node")
    peers = [
        BackbonePeer(
            name=m.name, public_key=m.public_key, address=m.address, endpoint=m.endpoint or None
        )
        for m in nodes.order_by("node__name")
    ]
    return _interface(own, peers)


def node_backbone(node: Node) -> BackboneInterface | None:
    """The node's backbone, with each enabled gateway that fronts it on the same pool."""
    own = _member(node)
    if own is None:
        return None
    gateways = BackboneMember.objects.filter(
        pool_id=own.pool_id, gateway__upstreams__node=node, gateway__enabled=True
    ).select_related("gateway")
    peers = [
        BackbonePeer(name=m.name, public_key=m.public_key, address=m.address)
        for m in gateways.order_by("gateway__name")
    ]
    return _interface(own, peers)


def upstream_host(upstream: GatewayUpstream, backbone: BackboneInterface | None) -> str | None:
    """Where the gateway's nginx reaches ``upstream``: its node's backbone address once the
    gateway is on the backbone (None: the node is not, so the gateway can't reach it),
    else the host registered with the upstream."""
    if backbone is None:
        return upstream.host
    return backbone.peer_addresses().get(upstream.node.name)
