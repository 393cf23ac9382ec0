"""Gateway rollout: build and sign each gateway's config, push it, read its health.

The same flow as node rollout (``control_plane.fleet.services``): :func:`roll_out_gateways`
makes one :class:`GatewayRelease` per gateway (in a transaction, under the gateway's row
lock, above any version the gateway is known to hold) and queues a push for each after
commit; :func:`deliver_gateway_release` makes one push and records the outcome;
:func:`check_gateway` reads the agent's health (a signed request), records each peer's
latest handshake, and catches the gateway up when it is behind.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from control_plane.changes.choices import ChangeAction
from control_plane.changes.services import current_change_context
from control_plane.core.signing import signing_key
from control_plane.fleet.choices import HealthStatus, ReleaseStatus
from control_plane.network.models import Gateway, GatewayRelease, GatewayState, Peer
from shared.gateway import (
    GatewayConfig,
    Upstream,
    WireGuardInterface,
    make_peer,
    sign_gateway_config,
)
from shared.signed_request import SignedRequestAuth

log = logging.getLogger(__name__)

CONFIG_PATH = "/internal/config"
HEALTH_PATH = "/internal/health"
JOSE = "application/jose"
_MAX_REASON = 500
_UNCHANGED = object()


class GatewayPushError(Exception):
    """A push failed in a way that may pass (agent down, timeout, 5xx): retry later."""


# --- Building --------------------------------------------------------------------------


def build_gateway_config(
    gateway: Gateway, version: int, issued_at: datetime | None = None
) -> GatewayConfig:
    """The config ``gateway`` should hold, from the database as it is now.

    Every peer of the gateway is listed; those not active (disabled, expired, or of an
    inactive client) travel disabled and without their PSK. Enabled peers' PSKs are
    sealed to the gateway's WireGuard key. Upstreams: the enabled nodes it fronts.
    """
    issued_at = issued_at or timezone.now()
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
        )
        for peer in gateway.peers.select_related("client").order_by("pk")
    ]
    upstreams = [
        Upstream(node=u.node.name, host=u.host, port=u.port)
        for u in gateway.upstreams.select_related("node").order_by("node__name")
        if u.node.enabled
    ]
    return GatewayConfig.create(
        version=version,
        issued_at=issued_at,
        gateway=gateway.name,
        interface=WireGuardInterface(
            name=gateway.interface_name,
            public_key=gateway.public_key,
            listen_port=gateway.listen_port,
            addresses=tuple(pool.gateway_interfaces()),
        ),
        http_port=gateway.http_port,
        peers=peers,
        upstreams=upstreams,
    )


def next_version(gateway: Gateway) -> int:
    """Above every release made for the gateway and every version it reported holding."""
    ours = gateway.releases.aggregate(top=Max("version"))["top"] or 0
    state = GatewayState.objects.filter(gateway=gateway).first()
    theirs = state.applied_version if state and state.applied_version else 0
    return max(ours, theirs) + 1


def create_gateway_release(gateway: Gateway) -> GatewayRelease:
    """Build, sign and store the next release for ``gateway`` (does not push it)."""
    with transaction.atomic():
        gateway = Gateway.objects.select_for_update().select_related("pool").get(pk=gateway.pk)
        GatewayState.objects.get_or_create(gateway=gateway)
        version = next_version(gateway)
        config = build_gateway_config(gateway, version)
        token = sign_gateway_config(config, signing_key())
        release = GatewayRelease(
            gateway=gateway,
            version=version,
            document=config.document(),
            signed_config=token,
            config_sha256=hashlib.sha256(token.encode("ascii")).hexdigest(),
            released_by=current_change_context().actor(),
        )
        release.set_change_action(ChangeAction.ROLL_OUT)
        release.save()
    return release


def enqueue_gateway_push(release: GatewayRelease) -> None:
    """Queue the push task; without a broker it runs here and now."""
    from control_plane.network.tasks import push_gateway_release

    try:
        push_gateway_release.delay(release.pk)
    except BrokerError as exc:
        log.warning("gateway release %s not queued: broker unavailable (%s)", release.pk, exc)


def roll_out_gateways(gateways: Iterable[Gateway] | None = None) -> list[GatewayRelease]:
    """A release for each gateway (default: every enabled one), pushed after commit."""
    targets = list(gateways) if gateways is not None else list(Gateway.objects.enabled())
    releases = []
    with transaction.atomic():
        for gateway in targets:
            release = create_gateway_release(gateway)
            releases.append(release)
            transaction.on_commit(lambda r=release: enqueue_gateway_push(r))
    return releases


# --- Pushing ---------------------------------------------------------------------------


def _timeout() -> httpx.Timeout:
    rollout = settings.SANCTUM.rollout
    return httpx.Timeout(rollout.timeout_seconds, connect=rollout.connect_timeout_seconds)


def _error_reason(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = str(error.get("code") or "")
    message = str(error.get("message") or response.reason_phrase or "")
    return code, f"HTTP {response.status_code} {code or 'error'}: {message}"[:_MAX_REASON]


def _finish(
    release: GatewayRelease, status: str, *, error: str = "", version: object = _UNCHANGED
) -> str:
    now = timezone.now()
    with transaction.atomic():
        locked = GatewayRelease.objects.select_for_update().get(pk=release.pk)
        locked.status = status
        locked.last_error = error
        if status == ReleaseStatus.APPLIED and locked.applied_at is None:
            locked.applied_at = now
        locked.save()
        state, _ = GatewayState.objects.select_for_update().get_or_create(
            gateway_id=release.gateway_id
        )
        state.last_push_at = now
        state.last_push_error = error
        if version is not _UNCHANGED:
            state.applied_version = version  # type: ignore[assignment]
        state.save()
    return status


def deliver_gateway_release(release: GatewayRelease) -> str:
    """One push of ``release`` to its gateway's agent; records and returns the status.

    Never sends a config older than the one the gateway is known to hold or than a newer
    release (those are marked superseded, unsent). Raises :class:`GatewayPushError`
    after recording a failure that a retry may fix.
    """
    with transaction.atomic():
        locked = (
            GatewayRelease.objects.select_for_update().select_related("gateway").get(pk=release.pk)
        )
        state, _ = GatewayState.objects.get_or_create(gateway_id=locked.gateway_id)
        if locked.status in (
            ReleaseStatus.APPLIED,
            ReleaseStatus.REJECTED,
            ReleaseStatus.SUPERSEDED,
        ):
            return str(locked.status)
        if GatewayRelease.objects.filter(
            gateway_id=locked.gateway_id, version__gt=locked.version
        ).exists():
            locked.status = ReleaseStatus.SUPERSEDED
            locked.save()
            return str(locked.status)
        held = state.applied_version
        if held is not None and held >= locked.version:
            locked.status = (
                ReleaseStatus.APPLIED if held == locked.version else ReleaseStatus.SUPERSEDED
            )
            locked.save()
            return str(locked.status)
        locked.attempts += 1
        locked.last_attempt_at = timezone.now()
        locked.save()
    gateway = locked.gateway
    try:
        response = httpx.put(
            gateway.endpoint(CONFIG_PATH),
            content=locked.signed_config.encode("ascii"),
            headers={"Content-Type": JOSE},
            timeout=_timeout(),
        )
    except httpx.HTTPError as exc:
        reason = f"gateway unreachable: {type(exc).__name__}: {exc}"[:_MAX_REASON]
        _finish(locked, ReleaseStatus.FAILED, error=reason)
        log.warning("push of gateway release %s to %s failed: %s", locked.pk, gateway.name, reason)
        raise GatewayPushError(reason) from None
    if response.status_code == 200:
        log.info("gateway %s applied config version %s", gateway.name, locked.version)
        return _finish(locked, ReleaseStatus.APPLIED, version=locked.version)
    code, reason = _error_reason(response)
    if response.status_code == 409 and code == "stale_version":
        return _settle_stale(locked, response, reason)
    if response.status_code >= 500 or response.status_code == 429:
        _finish(locked, ReleaseStatus.FAILED, error=reason)
        raise GatewayPushError(reason)
    # 400, 401, 409 wrong gateway or key, 422 nginx refused it: the same bytes can't
    # help; the operator fixes the cause and rolls out again.
    log.warning("gateway %s rejected release %s: %s", gateway.name, locked.pk, reason)
    return _finish(locked, ReleaseStatus.REJECTED, error=reason)


def _settle_stale(release: GatewayRelease, response: httpx.Response, reason: str) -> str:
    """The agent holds this version or a newer one; one it never got from us is overtaken."""
    try:
        held = int(response.json()["current_version"])
    except (ValueError, KeyError, TypeError):
        return _finish(release, ReleaseStatus.REJECTED, error=reason)
    if held == release.version:
        return _finish(release, ReleaseStatus.APPLIED, version=held)
    if GatewayRelease.objects.filter(gateway_id=release.gateway_id, version__gte=held).exists():
        return _finish(release, ReleaseStatus.SUPERSEDED, version=held)
    status = _finish(
        release,
        ReleaseStatus.SUPERSEDED,
        error=f"gateway holds version {held}, not issued here: releasing above it",
        version=held,
    )
    with transaction.atomic():
        newer = create_gateway_release(release.gateway)
        transaction.on_commit(lambda: enqueue_gateway_push(newer))
    return status


# --- Health, handshakes, catching up ---------------------------------------------------


def _record_handshakes(gateway: Gateway, health: dict[str, Any]) -> int:
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


def check_gateway(gateway: Gateway) -> GatewayState:
    """Read the agent's health (signed), record it and the handshakes; catch up if behind."""
    now = timezone.now()
    try:
        response = httpx.get(
            gateway.endpoint(HEALTH_PATH),
            auth=SignedRequestAuth(signing_key()),
            timeout=settings.SANCTUM.rollout.health_timeout_seconds,
        )
        health: dict[str, Any] | None = response.json() if response.status_code == 200 else None
        if health is None:
            status, error = HealthStatus.ERROR, f"HTTP {response.status_code}"
        else:
            status = HealthStatus.OK if health.get("status") == "ok" else HealthStatus.ERROR
            error = "; ".join(str(p) for p in health.get("problems") or [])[:_MAX_REASON]
    except httpx.HTTPError as exc:
        health, status = None, HealthStatus.UNREACHABLE
        error = f"{type(exc).__name__}: {exc}"[:_MAX_REASON]
    except ValueError:
        health, status, error = None, HealthStatus.ERROR, "health answer is not JSON"
    with transaction.atomic():
        state, _ = GatewayState.objects.select_for_update().get_or_create(gateway=gateway)
        state.health_status = status
        state.health_checked_at = now
        state.health_error = error
        if health is not None:
            state.health = health
            version = health.get("config_version")
            state.applied_version = version if isinstance(version, int) else None
            _record_handshakes(gateway, health)
        state.save()
    if health is not None and catch_up_gateway(gateway, state):
        state.refresh_from_db()
    return state


def catch_up_gateway(gateway: Gateway, state: GatewayState) -> bool:
    """Push the gateway's latest release once if it reports an older version."""
    latest = GatewayRelease.objects.filter(gateway=gateway).order_by("-version").first()
    if latest is None or latest.status in (ReleaseStatus.REJECTED, ReleaseStatus.SUPERSEDED):
        return False
    if state.applied_version is not None and state.applied_version >= latest.version:
        return False
    if latest.status == ReleaseStatus.APPLIED:
        with transaction.atomic():
            relock = GatewayRelease.objects.select_for_update().get(pk=latest.pk)
            relock.status = ReleaseStatus.PENDING
            relock.save()
    log.info(
        "gateway %s is behind (holds %s, latest %s): pushing",
        gateway.name,
        state.applied_version,
        latest.version,
    )
    try:
        deliver_gateway_release(latest)
    except GatewayPushError:
        return False
    return True


def check_gateways() -> list[GatewayState]:
    """:func:`check_gateway` for every enabled gateway, one after another (the reconciler)."""
    return [check_gateway(g) for g in Gateway.objects.enabled().select_related("pool")]
