"""Gateway rollout: what a gateway's config holds, plugged into core's rollout.

The mechanism (versions, pushes, health, catching up) is ``control_plane.core.rollout``;
this module says only what is a gateway's: :func:`build_gateway_config` from the
database, signed with ``shared.gateway.sign_gateway_config``, and what else the agent's
health report tells: each peer's latest handshake (:func:`record_handshakes`). Roll out
with ``roll_out(GATEWAYS, gateways)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from control_plane.core.rollout import ReleaseStamp, RolloutKind
from control_plane.core.signing import signer
from control_plane.network.backbone import gateway_backbone, upstream_host
from control_plane.network.models import Gateway, GatewayRelease, GatewayState, Peer
from control_plane.pki.choices import TargetKind
from control_plane.pki.services import tls_material
from shared.gateway import (
    GatewayConfig,
    Upstream,
    WireGuardInterface,
    make_peer,
    sign_gateway_config,
)
from shared.trust import CONFIG

GATEWAY = TargetKind.GATEWAY


def build_gateway_config(
    gateway: Gateway, version: int, stamp: ReleaseStamp | None = None
) -> GatewayConfig:
    """The config ``gateway`` should hold, from the database as it is now.

    Every peer of the gateway is listed; those not active (disabled, expired, or of an
    inactive client) travel disabled and without their PSK. Enabled peers' PSKs are
    sealed to the gateway's WireGuard key; each names its client's node pool, which is
    where the gateway routes it. Upstreams: the enabled nodes it fronts, with their pool
    and whether they drain; once the gateway is on the backbone, only those that are
    too, at their backbone address.
    Once it has enrolled: its management and ingress certificates, renewed when due.
    """
    stamp = stamp or ReleaseStamp.now()
    issued_at = stamp.issued_at
    pool = gateway.pool
    active = set(
        Peer.objects.filter(gateway=gateway).active(issued_at).values_list("pk", flat=True)
    )
    peers = [
        make_peer(
            id=peer.config_id,
            client=peer.client.slug,
            public_key=peer.public_key,
            addresses=peer.addresses(),
            enabled=peer.pk in active,
            preshared_key=peer.preshared_key,
            gateway=gateway.name,
            gateway_public_key=gateway.public_key,
            pool=peer.client.pool.name,
        )
        for peer in gateway.peers.select_related("client__pool").order_by("pk")
    ]
    backbone = gateway_backbone(gateway)
    upstreams = []
    for u in gateway.upstreams.select_related("node__pool").order_by("node__name"):
        host = upstream_host(u, backbone)
        if u.node.enabled and host is not None:
            upstreams.append(
                Upstream(
                    node=u.node.name,
                    host=host,
                    port=u.port,
                    pool=u.node.pool.name,
                    draining=u.node.draining,
                )
            )
    return GatewayConfig.create(
        version=version,
        **stamp.fields(),
        gateway=gateway.name,
        interface=WireGuardInterface(
            name=gateway.interface_name,
            public_key=gateway.public_key,
            listen_port=gateway.listen_port,
            addresses=tuple(pool.gateway_interfaces()),
        ),
        http_port=gateway.http_port,
        https_port=gateway.https_port,
        plain_http=gateway.plain_http,
        tls=tls_material(GATEWAY, gateway.name, ingress_ips=gateway.tunnel_addresses()),
        peers=peers,
        upstreams=upstreams,
        backbone=backbone,
    )


def record_handshakes(gateway: Gateway, health: dict[str, Any]) -> int:
    """Copy each peer's latest handshake from the agent's report onto the peer."""
    by_id = {}
    for entry in health.get("peers") or []:
        if not isinstance(entry, dict):
            continue
        stamp = entry.get("latest_handshake")
        peer_id = str(entry.get("id") or "")
        if isinstance(stamp, int) and stamp > 0 and peer_id.startswith("peer-"):
            by_id[peer_id.removeprefix("peer-")] = datetime.fromtimestamp(stamp, tz=UTC)
    updated = 0
    for pk, moment in by_id.items():
        if pk.isdigit():
            # Machine-written and not a logged field: update() leaves no trail row, on
            # purpose (a handshake every two minutes per peer is not an admin change).
            updated += Peer.objects.filter(pk=int(pk), gateway=gateway).update(
                last_handshake_at=moment
            )
    return updated


class GatewayRollout(RolloutKind[Gateway, GatewayRelease, GatewayState]):
    """Gateways: their config, pushed to the gateway agent; health brings handshakes."""

    name = "gateway"
    target_model = Gateway
    release_model = GatewayRelease
    state_model = GatewayState
    target_related = ("pool",)

    def build(self, target: Gateway, version: int, stamp: ReleaseStamp) -> GatewayConfig:
        return build_gateway_config(target, version, stamp)

    def sign(self, document: Any) -> str:
        return sign_gateway_config(document, signer(CONFIG))

    def health_key(self, target: Gateway) -> str:
        return target.signing_key

    def read_health(self, target: Gateway, health: dict[str, Any]) -> None:
        record_handshakes(target, health)

    def content(self, document: dict[str, Any]) -> dict[str, Any]:
        """Each sealed PSK counts by its format only: HPKE seals afresh on every build, so
        the text always differs, while the PSK under it is fixed for the peer (a new
        key pair is a new public key, which counts). A release sealed in a format the
        agent no longer reads (``v1``) is out of date, and the next refresh replaces it."""
        content = super().content(document)
        content["peers"] = [
            {**peer, "preshared_key": _sealed_format(peer.get("preshared_key"))}
            for peer in content.get("peers", [])
        ]
        return content


def _sealed_format(sealed: Any) -> str | None:
    return sealed.split(".", 1)[0] if isinstance(sealed, str) else None


GATEWAYS = GatewayRollout()
