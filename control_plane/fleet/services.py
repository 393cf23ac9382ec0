"""Rollout use cases: build and sign each node's bundle, push it, watch node health.

The flow: :func:`roll_out` makes one :class:`ConfigRelease` per node (in a transaction,
under the node's row lock, at a version above anything the node is known to hold) and
queues a push for each after commit, so a slow or dead node holds up nobody else.
:func:`deliver_release` makes one push attempt and records what happened;
:func:`check_node` reads a node's health and catches it up when it is behind.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from control_plane.changes.choices import ChangeAction
from control_plane.changes.services import current_change_context
from control_plane.clients.models import ApiKey, Client
from control_plane.fleet.choices import HealthStatus, ReleaseStatus
from control_plane.fleet.models import ConfigRelease, Node, NodeState
from control_plane.fleet.signing import signing_key
from control_plane.registry.models import ModelPin
from shared.config import ApiKeySpec, ClientLimits, ClientSpec, ConfigBundle, ModelSpec, sign_bundle

log = logging.getLogger(__name__)

CONFIG_PATH = "/internal/config"
HEALTH_PATH = "/internal/health"
JOSE = "application/jose"
_MAX_REASON = 500
# "Leave the node's known version as it is" (None means "holds none").
_UNCHANGED = object()


class PushTransientError(Exception):
    """A push failed in a way that may pass (node down, timeout, 5xx): retry later."""


@dataclass(frozen=True)
class PushOutcome:
    release_id: int
    status: str
    detail: str = ""


# --- Building --------------------------------------------------------------------------


def build_bundle(node: Node, version: int, issued_at: datetime | None = None) -> ConfigBundle:
    """The config ``node`` should hold, from the database as it is now.

    Models: every enabled pin whose file hash is verified. Clients: every active one,
    with its usable keys (revoked and expired ones are left out), the pinned models it
    may use, and this node's share of its rates and quotas: every enabled node serves
    every client, so each enforces its part (``Client.limit_shares``; docs/security.md).
    """
    issued_at = issued_at or timezone.now()
    serving = list(Node.objects.enabled().order_by("name").values_list("name", flat=True))
    share_of = serving.index(node.name) if node.name in serving else 0
    pins = list(ModelPin.objects.servable().prefetch_related("clients").order_by("name"))
    models = tuple(
        ModelSpec(
            name=pin.name,
            version=pin.version,
            sha256=pin.sha256,
            path=pin.path,
            context_size=pin.context_size,
            chat_template=pin.chat_template or None,
        )
        for pin in pins
    )
    allowed: dict[int, list[str]] = {}
    for pin in pins:
        for client in pin.clients.all():
            allowed.setdefault(client.pk, []).append(pin.name)
    keys: dict[int, list[ApiKey]] = {}
    for api_key in ApiKey.objects.usable(issued_at).order_by("prefix"):
        keys.setdefault(api_key.client_id, []).append(api_key)
    clients = tuple(
        ClientSpec(
            id=client.slug,
            name=client.name,
            api_keys=tuple(
                ApiKeySpec(prefix=k.prefix, sha256=k.sha256, expires_at=k.expires_at)
                for k in keys.get(client.pk, [])
            ),
            models=tuple(sorted(allowed.get(client.pk, []))),
            knowledge_bases=tuple(client.knowledge_bases.names()),
            embeddings=client.embeddings,
            limits=ClientLimits(
                max_sessions=client.max_sessions,
                max_tokens_per_request=client.max_tokens_per_request,
                max_running=client.max_running_generations,
                max_queued=client.max_queued_generations,
                max_parked_bytes=None
                if client.max_parked_kv_mib is None
                else client.max_parked_kv_mib << 20,
                **client.limit_shares(len(serving))[share_of],
            ),
        )
        for client in Client.objects.active().order_by("slug")
    )
    return ConfigBundle(
        version=version, issued_at=issued_at, node=node.name, models=models, clients=clients
    )


def next_version(node: Node) -> int:
    """Above every release made for the node and every version it reported holding."""
    ours = node.releases.aggregate(top=Max("version"))["top"] or 0
    state = NodeState.objects.filter(node=node).first()
    theirs = state.applied_version if state and state.applied_version else 0
    return max(ours, theirs) + 1


def create_release(node: Node) -> ConfigRelease:
    """Build, sign and store the next release for ``node`` (does not push it)."""
    with transaction.atomic():
        # The row lock serialises rollouts to one node; the unique (node, version)
        # constraint is the backstop.
        node = Node.objects.select_for_update().get(pk=node.pk)
        NodeState.objects.get_or_create(node=node)
        version = next_version(node)
        bundle = build_bundle(node, version)
        token = sign_bundle(bundle, signing_key())
        user = current_change_context().actor()
        release = ConfigRelease(
            node=node,
            version=version,
            bundle=bundle.document(),
            signed_bundle=token,
            bundle_sha256=hashlib.sha256(token.encode("ascii")).hexdigest(),
            released_by=user,
        )
        release.set_change_action(ChangeAction.ROLL_OUT)
        release.save()
    return release


def enqueue_push(release: ConfigRelease) -> None:
    """Queue the push task; without a broker it runs here and now."""
    from control_plane.fleet.tasks import push_release

    try:
        push_release.delay(release.pk)
    except BrokerError as exc:
        # The release stays pending; beat (or the reconciler) pushes it once the broker
        # and the node are reachable.
        log.warning("release %s not queued: broker unavailable (%s)", release.pk, exc)


def roll_out(nodes: Iterable[Node] | None = None) -> list[ConfigRelease]:
    """Make a release for each node (default: every enabled node) and queue its push.

    Pushes are queued after commit, one task per node, so a node that is down delays no
    other. Returns the releases; their status follows delivery.
    """
    targets = list(nodes) if nodes is not None else list(Node.objects.enabled())
    releases = []
    with transaction.atomic():
        for node in targets:
            release = create_release(node)
            releases.append(release)
            transaction.on_commit(lambda r=release: enqueue_push(r))
    return releases


# --- Pushing ---------------------------------------------------------------------------


def _timeout() -> httpx.Timeout:
    rollout = settings.SANCTUM.rollout
    return httpx.Timeout(rollout.timeout_seconds, connect=rollout.connect_timeout_seconds)


def _error_reason(response: httpx.Response) -> tuple[str, str]:
    """``(code, reason)`` from a node's OpenAI-shaped error body (never echoes a bundle)."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = str(error.get("code") or "")
    message = str(error.get("message") or response.reason_phrase or "")
    return code, f"HTTP {response.status_code} {code or 'error'}: {message}"[:_MAX_REASON]


def _finish(
    release: ConfigRelease,
    status: str,
    *,
    error: str = "",
    node_version: object = _UNCHANGED,
) -> PushOutcome:
    """Record a push's result on the release and on the node's state."""
    now = timezone.now()
    with transaction.atomic():
        locked = ConfigRelease.objects.select_for_update().get(pk=release.pk)
        locked.status = status
        locked.last_error = error
        if status == ReleaseStatus.APPLIED and locked.applied_at is None:
            locked.applied_at = now
        locked.save()
        state, _ = NodeState.objects.select_for_update().get_or_create(node_id=release.node_id)
        state.last_push_at = now
        state.last_push_error = error
        if node_version is not _UNCHANGED:
            state.applied_version = node_version  # type: ignore[assignment]
        state.save()
    return PushOutcome(release.pk, status, error)


def deliver_release(release: ConfigRelease) -> PushOutcome:
    """One push of ``release`` to its node; records the outcome and returns it.

    Never sends a bundle older than what the node is known to hold or than a newer
    release made for it (those are marked superseded, unsent). Raises
    :class:`PushTransientError` after recording a failure that a retry may fix.
    """
    with transaction.atomic():
        locked = ConfigRelease.objects.select_for_update().select_related("node").get(pk=release.pk)
        state, _ = NodeState.objects.get_or_create(node_id=locked.node_id)
        if locked.status in (
            ReleaseStatus.APPLIED,
            ReleaseStatus.REJECTED,
            ReleaseStatus.SUPERSEDED,
        ):
            return PushOutcome(locked.pk, locked.status, "already settled")
        newer = ConfigRelease.objects.filter(node_id=locked.node_id, version__gt=locked.version)
        if newer.exists():
            locked.status = ReleaseStatus.SUPERSEDED
            locked.save()
            return PushOutcome(locked.pk, locked.status, "a newer release exists")
        held = state.applied_version
        if held is not None and held >= locked.version:
            locked.status = (
                ReleaseStatus.APPLIED if held == locked.version else ReleaseStatus.SUPERSEDED
            )
            locked.save()
            return PushOutcome(locked.pk, locked.status, f"node holds version {held}")
        locked.attempts += 1
        locked.last_attempt_at = timezone.now()
        locked.save()
    node = locked.node
    try:
        response = httpx.put(
            node.endpoint(CONFIG_PATH),
            content=locked.signed_bundle.encode("ascii"),
            headers={"Content-Type": JOSE},
            timeout=_timeout(),
        )
    except httpx.HTTPError as exc:
        reason = f"node unreachable: {type(exc).__name__}: {exc}"[:_MAX_REASON]
        _finish(locked, ReleaseStatus.FAILED, error=reason)
        log.warning("push of release %s to node %s failed: %s", locked.pk, node.name, reason)
        raise PushTransientError(reason) from None

    if response.status_code == 200:
        log.info("node %s applied config version %s", node.name, locked.version)
        return _finish(locked, ReleaseStatus.APPLIED, node_version=locked.version)
    code, reason = _error_reason(response)
    if response.status_code == 409 and code == "stale_version":
        return _settle_stale(locked, response, reason)
    if response.status_code >= 500 or response.status_code == 429:
        _finish(locked, ReleaseStatus.FAILED, error=reason)
        raise PushTransientError(reason)
    # 400 malformed, 401 bad signature, 422 model unavailable or hash mismatch: sending
    # the same bytes again can't help; the operator fixes the cause and rolls out again.
    log.warning("node %s rejected release %s: %s", node.name, locked.pk, reason)
    return _finish(locked, ReleaseStatus.REJECTED, error=reason)


def _settle_stale(release: ConfigRelease, response: httpx.Response, reason: str) -> PushOutcome:
    """The node holds this version or a newer one: record what it holds.

    A newer version this control plane never issued (a database restored from backup, a
    node configured by hand) is overtaken: the database is the source of truth, so a new
    release is made above the node's version and pushed.
    """
    try:
        held = int(response.json()["current_version"])
    except (ValueError, KeyError, TypeError):
        return _finish(release, ReleaseStatus.REJECTED, error=reason)
    if held == release.version:
        return _finish(release, ReleaseStatus.APPLIED, node_version=held)
    if ConfigRelease.objects.filter(node_id=release.node_id, version__gte=held).exists():
        return _finish(release, ReleaseStatus.SUPERSEDED, node_version=held)
    outcome = _finish(
        release,
        ReleaseStatus.SUPERSEDED,
        error=f"node holds version {held}, not issued here: releasing above it",
        node_version=held,
    )
    log.warning("node %s holds unknown version %s: releasing above it", release.node_id, held)
    with transaction.atomic():
        newer = create_release(release.node)
        transaction.on_commit(lambda: enqueue_push(newer))
    return outcome


# --- Health and catching up -------------------------------------------------------------


def check_node(node: Node) -> NodeState:
    """Read the node's health, record it, and push the latest release if it is behind."""
    now = timezone.now()
    try:
        response = httpx.get(
            node.endpoint(HEALTH_PATH), timeout=settings.SANCTUM.rollout.health_timeout_seconds
        )
        health: dict[str, Any] | None = response.json() if response.status_code == 200 else None
        status = HealthStatus.OK if health is not None else HealthStatus.ERROR
        error = "" if health is not None else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        health, status = None, HealthStatus.UNREACHABLE
        error = f"{type(exc).__name__}: {exc}"[:_MAX_REASON]
    except ValueError:
        health, status, error = None, HealthStatus.ERROR, "health answer is not JSON"
    with transaction.atomic():
        state, _ = NodeState.objects.select_for_update().get_or_create(node=node)
        state.health_status = status
        state.health_checked_at = now
        state.health_error = error
        if health is not None:
            state.health = health
            version = health.get("config_version")
            state.applied_version = version if isinstance(version, int) else None
        state.save()
    if status == HealthStatus.OK and catch_up(node, state) is not None:
        state.refresh_from_db()
    return state


def catch_up(node: Node, state: NodeState) -> PushOutcome | None:
    """Push the node's latest release once if the node reports an older version."""
    latest = ConfigRelease.objects.filter(node=node).order_by("-version").first()
    if latest is None or latest.status in (ReleaseStatus.REJECTED, ReleaseStatus.SUPERSEDED):
        return None
    if state.applied_version is not None and state.applied_version >= latest.version:
        return None
    if latest.status == ReleaseStatus.APPLIED:
        # It held this release once and has lost it (restarted without it): send again.
        with transaction.atomic():
            relock = ConfigRelease.objects.select_for_update().get(pk=latest.pk)
            relock.status = ReleaseStatus.PENDING
            relock.save()
    log.info(
        "node %s is behind (holds %s, latest %s): pushing",
        node.name,
        state.applied_version,
        latest.version,
    )
    try:
        return deliver_release(latest)
    except PushTransientError:
        return None  # recorded on the release; the next poll tries again


def check_fleet() -> list[NodeState]:
    """:func:`check_node` for every enabled node, one after another (the reconciler)."""
    return [check_node(node) for node in Node.objects.enabled()]
