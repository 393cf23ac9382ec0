"""Peer use cases: provision, configure, enable, disable, expire, delete.

The admin, the API views and the tasks call these; each change is written with its
change-trail row in one transaction. A generated private key exists only in the
:class:`ProvisionedPeer` this returns (its config text): it is never stored.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from control_plane.clients.models import Client
from control_plane.core.errors import Conflict
from control_plane.core.tls import ingress_ca
from control_plane.network.allocation import PoolExhausted, allocate
from control_plane.network.models import AddressPool, Gateway, Peer
from control_plane.network.validators import validate_wireguard_key
from shared.wireguard import generate_key_pair, generate_preshared_key, render_client_config

log = logging.getLogger(__name__)
T = TypeVar("T")

# The unique constraints catch what the lock could not (a database without row locks).
_ALLOCATION_ATTEMPTS = 3
_UNSAFE_IN_COMMENT = re.compile(r"[\r\n#\[\]]+")


@dataclass(frozen=True)
class ProvisionedPeer:
    """A peer just made. ``config`` is its wg-quick file; with a generated key pair it
    holds the private key, and this is the only copy: show it once."""

    peer: Peer
    config: str = field(repr=False)
    private_key_included: bool = False


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "Choose a time in the future."})


def with_pool_lock(pool_id: int, create: Callable[[AddressPool], T]) -> T:
    """``create(pool)`` in a transaction holding the pool's row lock, which serialises
    allocations from one pool; the unique constraints on (pool, address) stand behind
    it, and a race they catch (a database without row locks) is tried again."""
    for attempt in range(_ALLOCATION_ATTEMPTS):
        try:
            with transaction.atomic():
                return create(AddressPool.objects.select_for_update().get(pk=pool_id))
        except IntegrityError:
            if attempt == _ALLOCATION_ATTEMPTS - 1:
                raise Conflict("the address was taken meanwhile; try again", "busy") from None
    raise AssertionError("unreachable")


def _allocate_addresses(pool: AddressPool) -> tuple[str, str | None]:
    """The next free IPv4 (and IPv6) address of ``pool``; call it under the pool's lock."""
    used = Peer.objects.filter(pool=pool)
    try:
        v4 = allocate(pool.ipv4_network, used.values_list("address_v4", flat=True))
        v6 = None
        if pool.ipv6_network is not None:
            in_use = used.values_list("address_v6", flat=True)
            v6 = allocate(pool.ipv6_network, (a for a in in_use if a is not None))
    except PoolExhausted as exc:
        raise Conflict(f"{exc}: no tunnel address left", "pool_exhausted") from None
    return str(v4), (str(v6) if v6 is not None else None)


def provision_peer(
    client: Client,
    gateway: Gateway,
    *,
    public_key: str | None = None,
    name: str = "",
    expires_at: datetime | None = None,
) -> ProvisionedPeer:
    """Give ``client`` a peer on ``gateway``: a tunnel address, a PSK, its config file.

    The client's own ``public_key`` is the preferred path (its private key never leaves
    the client); without one a key pair is made here and its private key is returned in
    the config once, never stored. Raises ``Conflict`` (409) when the pool is exhausted
    or the key already has a peer on this gateway. The tunnel works after the gateway's
    next rollout.
    """
    _check_expiry(expires_at)
    private_key = None
    if public_key:
        public_key = public_key.strip()
        try:
            validate_wireguard_key(public_key)
        except ValidationError as exc:
            raise ValidationError({"public_key": exc.messages}) from None
        if public_key == gateway.public_key:
            raise ValidationError({"public_key": "That is the gateway's own public key."})
    else:
        private_key, public_key = generate_key_pair()

    def create(pool: AddressPool) -> Peer:
        if Peer.objects.filter(gateway=gateway, public_key=public_key).exists():
            raise Conflict(
                f"this public key already has a peer on gateway {gateway.name}",
                "duplicate_public_key",
            )
        address_v4, address_v6 = _allocate_addresses(pool)
        peer = Peer(
            client=client,
            gateway=gateway,
            pool=pool,
            name=name,
            public_key=public_key,
            preshared_key=generate_preshared_key(),
            key_generated=private_key is not None,
            address_v4=address_v4,
            address_v6=address_v6,
            expires_at=expires_at,
        )
        peer.save()
        return peer

    peer = with_pool_lock(gateway.pool_id, create)
    log.info("peer %s provisioned on gateway %s", peer.pk, gateway.name)
    return ProvisionedPeer(
        peer=peer,
        config=client_config(peer, private_key=private_key),
        private_key_included=private_key is not None,
    )


def client_config(peer: Peer, *, private_key: str | None = None) -> str:
    """The peer's wg-quick file (``private_key`` only right after generating it)."""
    gateway = peer.gateway
    label = _UNSAFE_IN_COMMENT.sub(" ", peer.name or peer.config_id).strip()
    description = (
        f"Sanctum gateway {gateway.name}, client {peer.client.slug}, {label}; "
        f"API {gateway.api_base}"
    )
    if not gateway.plain_http:
        # The QR code carries this too: enough for a client to pin the CA it is given.
        description += f"; TLS: ingress CA SHA-256 {ingress_ca().fingerprint}"
    return render_client_config(
        addresses=peer.addresses(),
        private_key=private_key,
        gateway_public_key=gateway.public_key,
        preshared_key=peer.preshared_key,
        endpoint=gateway.public_endpoint,
        allowed_ips=gateway.pool.gateway_addresses(),
        description=description,
    )


def config_qr_svg(config: str) -> bytes:
    """A QR code of the config (SVG, one rect per module), for phone WireGuard apps."""
    import qrcode
    import qrcode.image.svg

    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        box_size=10,
        border=4,
        image_factory=qrcode.image.svg.SvgImage,
    )
    code.add_data(config)
    code.make(fit=True)
    out = io.BytesIO()
    code.make_image().save(out)
    return out.getvalue()


def disable_peer(peer: Peer, *, reason: str) -> Peer:
    """Take the peer's tunnel out of the gateway config (at the next rollout).

    The reason goes into the change trail with the change.
    """
    reason = reason.strip()[:200] or "disabled"
    with transaction.atomic():
        locked = Peer.objects.select_for_update().get(pk=peer.pk)
        if locked.enabled or locked.disabled_reason != reason:
            locked.enabled = False
            locked.disabled_reason = reason
            locked.disabled_at = locked.disabled_at or timezone.now()
            locked.save()
    return locked


def enable_peer(peer: Peer, *, expires_at: datetime | None = None) -> Peer:
    """Put the peer back (at the next rollout); an expired one needs a new ``expires_at``."""
    _check_expiry(expires_at)
    with transaction.atomic():
        locked = Peer.objects.select_for_update().get(pk=peer.pk)
        if expires_at is not None:
            locked.expires_at = expires_at
        if locked.expires_at is not None and locked.expires_at <= timezone.now():
            raise ValidationError({"expires_at": "The peer has expired: give a new expiry."})
        if not locked.enabled:
            locked.enabled = True
            locked.disabled_reason = ""
            locked.disabled_at = None
        locked.save()
    return locked


def delete_peer(peer: Peer) -> None:
    """Delete the peer; its tunnel addresses go back to the pool."""
    with transaction.atomic():
        peer.delete()


def expire_peers(at: datetime | None = None) -> list[Peer]:
    """Disable every enabled peer whose expiry has passed, with the reason in the trail."""
    at = at or timezone.now()
    expired = []
    for peer in Peer.objects.due_to_expire(at).select_related("gateway"):
        reason = f"expired at {peer.expires_at.isoformat() if peer.expires_at else at}"
        expired.append(disable_peer(peer, reason=reason))
    if expired:
        log.info("%d peer(s) expired", len(expired))
    return expired
