"""One rollout mechanism for every kind of target: release, deliver, check, catch up.

A target (a data-plane node, a gateway) holds a signed document made here. The flow is
the same for every kind and lives here once; a kind plugs in only what differs, as a
:class:`RolloutKind` (its models, how to build and sign its document, its endpoint, and
what else its health report tells).

- :func:`create_release`: under the target's row lock, the next version (above every
  release made for it and above the version it reports holding), built and signed.
- :func:`roll_out`: a release per target, each push queued after commit, one task per
  target, so a target that is down delays no other.
- :func:`deliver`: one push of one release. It never sends a release that a newer one
  replaced, or one the target is known to hold (marked superseded or applied, unsent).
  200: applied. 409 ``stale_version``: the target holds this version (a lost answer:
  applied), an older one we issued (superseded), or a newer one never issued here (a
  restored database, a hand-made config): that one is overtaken by a new release above
  it. 5xx and 429: :class:`PushTransientError`, which the task retries with backoff. Any
  other 4xx: rejected; the same bytes can't help, the operator fixes the cause.
- :func:`check_health`: read the target's health report, record it, let the kind read
  what else it tells, and :func:`catch_up` a target that is behind.

Every HTTP call to a target goes through :func:`call_target`, which signs it for that
target (``management_auth(target.name)``) and uses ``shared.management``'s contract.

Where later changes go (one place each):

- pushes as signed management requests with an audience: :func:`call_target` already
  signs every call with ``management_auth(target.name)``; the audience goes into the
  signature there (``control_plane.core.signing``), for pushes and health alike.
- health answers signed by the target's key: :meth:`RolloutKind.open_health` (the kind
  gives the target's key; verification is the same for every kind).
- "out of date" (holds less than it should): ``control_plane.core.models.rollout_state``.
- a change (a revoked key, a disabled peer) rolling out on commit: the service calls
  :func:`roll_out` inside its transaction; the pushes already wait for the commit.
- bundles that expire and are re-issued before: :meth:`RolloutKind.build` stamps the
  expiry, and :func:`release_to_send` decides when the latest release is too old to send
  (make a new one there).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx
from django.conf import settings
from django.db import models, transaction
from django.db.models import Max
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from control_plane.changes.choices import ChangeAction
from control_plane.changes.services import current_change_context
from control_plane.core.choices import HealthStatus, ReleaseStatus
from control_plane.core.models import Release, RolloutTarget, TargetState
from control_plane.core.signing import management_auth
from shared.management import CONFIG_PATH, HEALTH_PATH, JOSE, STALE_VERSION

log = logging.getLogger(__name__)

_MAX_REASON = 500
# "Leave the target's known version as it is" (None means "holds none").
_UNCHANGED = object()

TargetT = TypeVar("TargetT", bound=RolloutTarget)
ReleaseT = TypeVar("ReleaseT", bound=Release)
StateT = TypeVar("StateT", bound=TargetState)


class PushTransientError(Exception):
    """A push failed in a way that may pass (target down, timeout, 5xx, 429): retry."""


@dataclass(frozen=True)
class PushOutcome:
    release_id: int
    status: str
    detail: str = ""


class SignableDocument(Protocol):
    """What a kind builds: a pydantic contract model from ``shared``."""

    def document(self) -> dict[str, Any]: ...


class RolloutKind(Generic[TargetT, ReleaseT, StateT]):
    """What one kind of target plugs into the rollout mechanism.

    Subclasses set the three models and implement :meth:`build` and :meth:`sign`; the
    other methods have the behaviour every kind shares and may be extended.
    """

    #: The kind's name: the tasks' argument, and the word in messages ("node unreachable").
    name: ClassVar[str]
    target_model: type[TargetT]
    release_model: type[ReleaseT]
    state_model: type[StateT]
    #: ``select_related`` for a target, so :meth:`build` reads it in one query.
    target_related: tuple[str, ...] = ()

    # --- What each kind must say ---------------------------------------------------------

    def build(self, target: TargetT, version: int, issued_at: datetime) -> SignableDocument:
        """The document ``target`` should hold at ``version``, from the database now."""
        raise NotImplementedError

    def sign(self, document: Any) -> str:
        """The document as a compact JWS, signed with the control plane's config key."""
        raise NotImplementedError

    # --- What a kind may change -----------------------------------------------------------

    def targets(self) -> models.QuerySet[TargetT]:
        """The targets rollouts and health polls go to by default: the enabled ones."""
        return self.target_model.objects.filter(enabled=True).select_related(*self.target_related)

    def endpoint(self, target: TargetT, path: str) -> str:
        """The URL of a management ``path`` on ``target``."""
        return target.endpoint(path)

    def open_health(self, target: TargetT, response: httpx.Response) -> dict[str, Any] | None:
        """The health report in ``response``, or ``None`` when the target answered an error.

        Raises ``ValueError`` for an answer that is not a report. When health answers
        become JWS signed by the target, they are verified here (with a key the kind
        gives), for every kind at once.
        """
        if response.status_code != 200:
            return None
        health = response.json()
        if not isinstance(health, dict):
            raise ValueError("health answer is not a JSON object")
        return health

    def read_health(self, target: TargetT, health: dict[str, Any]) -> None:
        """Record what else a health report tells (called inside the state's transaction)."""

    # --- Helpers for the generic code -----------------------------------------------------

    def _of(self, model: type[models.Model], target_id: int | None) -> dict[str, Any]:
        return {f"{model.target_field}_id": target_id}

    def lock_target(self, target_id: int) -> TargetT:
        return (
            self.target_model.objects.select_for_update()
            .select_related(*self.target_related)
            .get(pk=target_id)
        )

    def state_for(self, target_id: int | None, *, lock: bool = False) -> StateT:
        manager = self.state_model.objects
        rows = manager.select_for_update() if lock else manager.all()
        state, _ = rows.get_or_create(**self._of(self.state_model, target_id))
        return state

    def releases_of(self, target_id: int | None) -> models.QuerySet[ReleaseT]:
        return self.release_model.objects.filter(**self._of(self.release_model, target_id))

    def __repr__(self) -> str:
        return f"<RolloutKind {self.name}>"


# --- The kinds --------------------------------------------------------------------------

_KINDS: dict[str, RolloutKind[Any, Any, Any]] = {}


def register(kind: RolloutKind[Any, Any, Any]) -> None:
    """Make ``kind`` known to the tasks (each app registers its own in ``ready()``)."""
    _KINDS[kind.name] = kind


def rollout_kind(name: str) -> RolloutKind[Any, Any, Any]:
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"no rollout kind {name!r}") from None


def rollout_kinds() -> list[RolloutKind[Any, Any, Any]]:
    return list(_KINDS.values())


# --- The management link ------------------------------------------------------------------


def call_target(
    kind: RolloutKind[TargetT, Any, Any],
    target: TargetT,
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    timeout: httpx.Timeout | float,
) -> httpx.Response:
    """One management request to ``target``, signed for it (its name is the audience).

    The only way rollout talks to a target. Raises ``httpx.HTTPError`` when it can't be
    reached.
    """
    headers = {"Content-Type": JOSE} if content is not None else {}
    return httpx.request(
        method,
        kind.endpoint(target, path),
        content=content,
        headers=headers,
        auth=management_auth(target.name),
        timeout=timeout,
    )


def _push_timeout() -> httpx.Timeout:
    rollout = settings.SANCTUM.rollout
    return httpx.Timeout(rollout.timeout_seconds, connect=rollout.connect_timeout_seconds)


def _error_reason(response: httpx.Response) -> tuple[str, str]:
    """``(code, reason)`` from an OpenAI-shaped error body (never echoes a document)."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = str(error.get("code") or "")
    message = str(error.get("message") or response.reason_phrase or "")
    return code, f"HTTP {response.status_code} {code or 'error'}: {message}"[:_MAX_REASON]


# --- Releasing --------------------------------------------------------------------------


def next_version(kind: RolloutKind[Any, Any, Any], target: RolloutTarget) -> int:
    """Above every release made for the target and every version it reported holding."""
    ours = kind.releases_of(target.pk).aggregate(top=Max("version"))["top"] or 0
    state = kind.state_model.objects.filter(**kind._of(kind.state_model, target.pk)).first()
    theirs = state.applied_version if state and state.applied_version else 0
    return max(ours, theirs) + 1


def create_release(kind: RolloutKind[TargetT, ReleaseT, Any], target: TargetT) -> ReleaseT:
    """Build, sign and store the next release for ``target`` (does not push it)."""
    with transaction.atomic():
        # The row lock serialises rollouts to one target; the unique (target, version)
        # constraint is the backstop.
        target = kind.lock_target(target.pk)
        kind.state_for(target.pk)
        version = next_version(kind, target)
        document = kind.build(target, version, timezone.now())
        token = kind.sign(document)
        release = kind.release_model(
            version=version,
            document=document.document(),
            signed_document=token,
            document_sha256=hashlib.sha256(token.encode("ascii")).hexdigest(),
            released_by=current_change_context().actor(),
            **{kind.release_model.target_field: target},
        )
        release.set_change_action(ChangeAction.ROLL_OUT)
        release.save()
    return release


def enqueue_push(kind: RolloutKind[Any, Any, Any], release: Release) -> None:
    """Queue the push task; without a broker it runs here and now."""
    from control_plane.core.tasks import push_release

    try:
        push_release.delay(kind.name, release.pk)
    except BrokerError as exc:
        # The release stays pending; beat (or the reconciler) pushes it once the broker
        # and the target are reachable.
        log.warning("%s release %s not queued: broker unavailable (%s)", kind.name, release.pk, exc)


def roll_out(
    kind: RolloutKind[TargetT, ReleaseT, Any], targets: Iterable[TargetT] | None = None
) -> list[ReleaseT]:
    """Make a release for each target (default: every enabled one) and queue its push.

    Pushes are queued after commit, one task per target, so a target that is down delays
    no other. Returns the releases; their status follows delivery.
    """
    chosen = list(targets) if targets is not None else list(kind.targets())
    releases = []
    with transaction.atomic():
        for target in chosen:
            release = create_release(kind, target)
            releases.append(release)
            transaction.on_commit(lambda r=release: enqueue_push(kind, r))
    return releases


# --- Delivering -------------------------------------------------------------------------


def _finish(
    kind: RolloutKind[Any, Any, Any],
    release: Release,
    status: str,
    *,
    error: str = "",
    held: object = _UNCHANGED,
) -> PushOutcome:
    """Record a push's result on the release and on the target's state."""
    now = timezone.now()
    with transaction.atomic():
        locked = kind.release_model.objects.select_for_update().get(pk=release.pk)
        locked.status = status
        locked.last_error = error
        if status == ReleaseStatus.APPLIED and locked.applied_at is None:
            locked.applied_at = now
        locked.save()
        state = kind.state_for(release.target_id, lock=True)
        state.last_push_at = now
        state.last_push_error = error
        if held is not _UNCHANGED:
            state.applied_version = held
        state.save()
    return PushOutcome(release.pk, status, error)


def deliver(kind: RolloutKind[Any, ReleaseT, Any], release: ReleaseT) -> PushOutcome:
    """One push of ``release`` to its target; records the outcome and returns it.

    Never sends a document older than what the target is known to hold or than a newer
    release made for it (those are marked superseded, unsent). Raises
    :class:`PushTransientError` after recording a failure that a retry may fix.
    """
    with transaction.atomic():
        locked = (
            kind.release_model.objects.select_for_update()
            .select_related(kind.release_model.target_field)
            .get(pk=release.pk)
        )
        state = kind.state_for(locked.target_id)
        if locked.settled:
            return PushOutcome(locked.pk, locked.status, "already settled")
        if kind.releases_of(locked.target_id).filter(version__gt=locked.version).exists():
            locked.status = ReleaseStatus.SUPERSEDED
            locked.save()
            return PushOutcome(locked.pk, locked.status, "a newer release exists")
        held = state.applied_version
        if held is not None and held >= locked.version:
            locked.status = (
                ReleaseStatus.APPLIED if held == locked.version else ReleaseStatus.SUPERSEDED
            )
            locked.save()
            return PushOutcome(locked.pk, locked.status, f"{kind.name} holds version {held}")
        locked.attempts += 1
        locked.last_attempt_at = timezone.now()
        locked.save()
    target = locked.target
    try:
        response = call_target(
            kind,
            target,
            "PUT",
            CONFIG_PATH,
            content=locked.signed_document.encode("ascii"),
            timeout=_push_timeout(),
        )
    except httpx.HTTPError as exc:
        reason = f"{kind.name} unreachable: {type(exc).__name__}: {exc}"[:_MAX_REASON]
        _finish(kind, locked, ReleaseStatus.FAILED, error=reason)
        log.warning(
            "push of %s release %s to %s failed: %s", kind.name, locked.pk, target.name, reason
        )
        raise PushTransientError(reason) from None

    if response.status_code == 200:
        log.info("%s %s applied version %s", kind.name, target.name, locked.version)
        return _finish(kind, locked, ReleaseStatus.APPLIED, held=locked.version)
    code, reason = _error_reason(response)
    if response.status_code == 409 and code == STALE_VERSION:
        return _settle_stale(kind, locked, response, reason)
    if response.status_code >= 500 or response.status_code == 429:
        _finish(kind, locked, ReleaseStatus.FAILED, error=reason)
        raise PushTransientError(reason)
    # 400 malformed, 401 bad signature, 409 wrong target or key, 422 refused (a model
    # file that doesn't match, an nginx config that doesn't load): sending the same bytes
    # again can't help; the operator fixes the cause and rolls out again.
    log.warning("%s %s rejected release %s: %s", kind.name, target.name, locked.pk, reason)
    return _finish(kind, locked, ReleaseStatus.REJECTED, error=reason)


def _settle_stale(
    kind: RolloutKind[Any, Any, Any], release: Release, response: httpx.Response, reason: str
) -> PushOutcome:
    """The target holds this version or a newer one: record what it holds.

    A newer version this control plane never issued (a database restored from backup, a
    target configured by hand) is overtaken: the database is the source of truth, so a
    new release is made above the target's version and pushed.
    """
    try:
        held = int(response.json()["current_version"])
    except (ValueError, KeyError, TypeError):
        return _finish(kind, release, ReleaseStatus.REJECTED, error=reason)
    if held == release.version:
        return _finish(kind, release, ReleaseStatus.APPLIED, held=held)
    if kind.releases_of(release.target_id).filter(version__gte=held).exists():
        return _finish(kind, release, ReleaseStatus.SUPERSEDED, held=held)
    outcome = _finish(
        kind,
        release,
        ReleaseStatus.SUPERSEDED,
        error=f"{kind.name} holds version {held}, not issued here: releasing above it",
        held=held,
    )
    log.warning(
        "%s %s holds unknown version %s: releasing above it", kind.name, release.target_id, held
    )
    with transaction.atomic():
        newer = create_release(kind, release.target)
        transaction.on_commit(lambda: enqueue_push(kind, newer))
    return outcome


# --- Health and catching up -------------------------------------------------------------


def check_health(kind: RolloutKind[TargetT, Any, StateT], target: TargetT) -> StateT:
    """Read the target's health, record it, and push the latest release if it is behind.

    A report counts as OK when it says ``"status": "ok"``; otherwise its ``problems``
    are the recorded error. A target that answered with a report is caught up.
    """
    now = timezone.now()
    health: dict[str, Any] | None = None
    try:
        response = call_target(
            kind,
            target,
            "GET",
            HEALTH_PATH,
            timeout=settings.SANCTUM.rollout.health_timeout_seconds,
        )
        health = kind.open_health(target, response)
        if health is None:
            status, error = HealthStatus.ERROR, f"HTTP {response.status_code}"
        else:
            status = HealthStatus.OK if health.get("status") == "ok" else HealthStatus.ERROR
            error = "; ".join(str(p) for p in health.get("problems") or [])[:_MAX_REASON]
    except httpx.HTTPError as exc:
        status = HealthStatus.UNREACHABLE
        error = f"{type(exc).__name__}: {exc}"[:_MAX_REASON]
    except ValueError:
        health, status, error = None, HealthStatus.ERROR, "health answer is not JSON"
    with transaction.atomic():
        state = kind.state_for(target.pk, lock=True)
        state.health_status = status
        state.health_checked_at = now
        state.health_error = error
        if health is not None:
            state.health = health
            version = health.get("config_version")
            state.applied_version = version if isinstance(version, int) else None
            kind.read_health(target, health)
        state.save()
    if health is not None and catch_up(kind, target, state) is not None:
        state.refresh_from_db()
    return state


def release_to_send(
    kind: RolloutKind[TargetT, ReleaseT, StateT], target: TargetT, state: StateT
) -> ReleaseT | None:
    """The release a target that reported ``state`` should be sent now, if any.

    Its latest release, when it holds an older version (it was down, or restarted
    without its document) and that release was not refused or replaced.
    """
    latest: ReleaseT | None = kind.release_model.objects.latest_for(target.pk)  # type: ignore[attr-defined]
    if latest is None or latest.status in (ReleaseStatus.REJECTED, ReleaseStatus.SUPERSEDED):
        return None
    if state.applied_version is not None and state.applied_version >= latest.version:
        return None
    return latest


def catch_up(
    kind: RolloutKind[TargetT, Any, StateT], target: TargetT, state: StateT
) -> PushOutcome | None:
    """Push :func:`release_to_send` once, if there is one."""
    latest = release_to_send(kind, target, state)
    if latest is None:
        return None
    if latest.status == ReleaseStatus.APPLIED:
        # It held this release once and has lost it (restarted without it): send again.
        with transaction.atomic():
            relock = kind.release_model.objects.select_for_update().get(pk=latest.pk)
            relock.status = ReleaseStatus.PENDING
            relock.save()
    log.info(
        "%s %s is behind (holds %s, latest %s): pushing",
        kind.name,
        target.name,
        state.applied_version,
        latest.version,
    )
    try:
        return deliver(kind, latest)
    except PushTransientError:
        return None  # recorded on the release; the next poll tries again


def check_all(kind: RolloutKind[Any, Any, StateT]) -> list[StateT]:
    """:func:`check_health` for every enabled target of ``kind``, one after another."""
    return [check_health(kind, target) for target in kind.targets()]
