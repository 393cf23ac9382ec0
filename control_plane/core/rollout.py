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

Every HTTP call to a target goes through :func:`call_target`, which signs it with the
management key for that target (its name is the audience), speaks mutual TLS to it
(``control_plane.core.tls``) and uses ``shared.management``'s contract. Health answers
are JWS signed by the target's own key for that one request;
:meth:`RolloutKind.open_health` believes nothing else.

Every release expires (``RolloutSettings.release_lifetime_seconds``) and carries the
config and management keys the target is to trust (:class:`ReleaseStamp`).
:func:`refresh` makes a new release for a target whose latest one expires soon or names
other keys than the keyring's, and :func:`advance_keys` activates a next key once every
target holds a release that trusts it. :func:`release_on_commit` is how a change to
what targets hold (a revoked key, a disabled peer) reaches them by itself.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx
from django.conf import settings
from django.db import models, transaction
from django.db.models import Max
from django.dispatch import Signal
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from control_plane.changes.choices import ChangeAction
from control_plane.changes.services import current_change_context
from control_plane.core.choices import HealthStatus, ReleaseStatus
from control_plane.core.models import Release, RolloutTarget, TargetState
from control_plane.core.signing import keyring, management_auth, target_trust
from control_plane.core.tls import management_client
from shared.keyring import KeyringError
from shared.keys import KeyFileError, public_key_from_pem
from shared.management import CONFIG_PATH, CONTROL_PLANE_AUDIENCE, HEALTH_PATH, JOSE, STALE_VERSION
from shared.pki import TlsMaterial, load_certificate
from shared.release import MAX_VERSION
from shared.signed_request import SignedRequestAuth, SignedRequestError, open_answer
from shared.trust import TARGET_PURPOSES, KeySet

log = logging.getLogger(__name__)

release_applied = Signal()
"""Sent when a target answered 200 to a push: ``sender`` its model, ``target``, ``version``.
(The audit app logs a node's new statement then: what it runs changed.)"""

_MAX_REASON = 500
# What changes with every release, and so never makes one out of date.
_STAMP_FIELDS = ("version", "issued_at", "expires_at")
# A health report is a few kilobytes; whatever is bigger is not stored.
MAX_HEALTH_BYTES = 1 << 20
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


@dataclass(frozen=True)
class ReleaseStamp:
    """What every release carries besides its content (``shared.release``)."""

    issued_at: datetime
    expires_at: datetime
    trust: KeySet

    @classmethod
    def now(cls) -> ReleaseStamp:
        issued_at = timezone.now()
        lifetime = settings.SANCTUM.rollout.release_lifetime_seconds
        return cls(issued_at, issued_at + timedelta(seconds=lifetime), target_trust())

    def fields(self) -> dict[str, Any]:
        return {"issued_at": self.issued_at, "expires_at": self.expires_at, "trust": self.trust}


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

    def build(self, target: TargetT, version: int, stamp: ReleaseStamp) -> SignableDocument:
        """The document ``target`` should hold at ``version``, from the database now."""
        raise NotImplementedError

    def health_key(self, target: TargetT) -> str:
        """The PEM of the key ``target`` signs its health answers with (registered here)."""
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

    def open_health(
        self, target: TargetT, response: httpx.Response, nonce: str
    ) -> dict[str, Any] | None:
        """The health report in ``response``, or ``None`` when the target answered an error.

        Only a JWS signed by the target's registered key, for the request whose one-time
        id is ``nonce``, is a report; anything else raises ``ValueError`` naming why.
        """
        if response.status_code != 200:
            return None
        if len(response.content) > MAX_HEALTH_BYTES:
            raise ValueError(f"health answer refused: over {MAX_HEALTH_BYTES} bytes")
        try:
            key = public_key_from_pem(self.health_key(target).strip(), source="its key")
        except KeyFileError:
            raise ValueError(f"{self.name} has no usable signing key registered") from None
        try:
            return open_answer(response.content, key, nonce=nonce, audience=CONTROL_PLANE_AUDIENCE)
        except SignedRequestError as exc:
            raise ValueError(f"health answer refused: {exc}") from None

    def read_health(self, target: TargetT, health: dict[str, Any]) -> None:
        """Record what else a health report tells (called inside the state's transaction)."""

    def content(self, document: dict[str, Any]) -> dict[str, Any]:
        """What of a document counts when asking whether a target's release is out of
        date: all but the version and times. A kind whose documents hold something made
        anew on every build (a secret sealed afresh) says what of it counts instead."""
        return {k: v for k, v in document.items() if k not in _STAMP_FIELDS}

    # --- Helpers for the generic code -----------------------------------------------------

    def _of(self, model: type[Release | TargetState], target_id: int | None) -> dict[str, Any]:
        return {f"{model.target_field}_id": target_id}

    def lock_target(self, target_id: int) -> TargetT:
        # ``of=("self",)``: lock the target's row only, not the rows it is joined to (a
        # gateway's address pool, which peer allocation locks first: a deadlock).
        return (
            self.target_model.objects.select_for_update(of=("self",))
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
    auth: SignedRequestAuth | None = None,
) -> httpx.Response:
    """One management request to ``target``, signed for it (its name is the audience).

    The only way rollout talks to a target. Raises ``httpx.HTTPError`` when it can't be
    reached.
    """
    headers = {"Content-Type": JOSE} if content is not None else {}
    with management_client(kind.endpoint(target, ""), target.name) as client:
        return client.request(
            method,
            kind.endpoint(target, path),
            content=content,
            headers=headers,
            auth=auth or management_auth(target.name),
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
        document = kind.build(target, version, ReleaseStamp.now())
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
            transaction.on_commit(partial(enqueue_push, kind, release))
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
            kind.release_model.objects.select_for_update(of=("self",))
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
        outcome = _finish(kind, locked, ReleaseStatus.APPLIED, held=locked.version)
        release_applied.send(sender=kind.target_model, target=target, version=locked.version)
        return outcome
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
    if not 0 < held <= MAX_VERSION:
        return _finish(
            kind, release, ReleaseStatus.REJECTED, error=f"{kind.name} claims version {held}"
        )
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
    auth = management_auth(target.name)
    try:
        response = call_target(
            kind,
            target,
            "GET",
            HEALTH_PATH,
            timeout=settings.SANCTUM.rollout.health_timeout_seconds,
            auth=auth,
        )
        health = kind.open_health(target, response, str(auth.jti))
        if health is None:
            status, error = HealthStatus.ERROR, f"HTTP {response.status_code}"
        else:
            status = HealthStatus.OK if health.get("status") == "ok" else HealthStatus.ERROR
            error = "; ".join(str(p) for p in health.get("problems") or [])[:_MAX_REASON]
    except httpx.HTTPError as exc:
        status = HealthStatus.UNREACHABLE
        error = f"{type(exc).__name__}: {exc}"[:_MAX_REASON]
    except ValueError as exc:
        health, status, error = None, HealthStatus.ERROR, str(exc)[:_MAX_REASON]
    with transaction.atomic():
        state = kind.state_for(target.pk, lock=True)
        state.health_status = status
        state.health_checked_at = now
        state.health_error = error
        if health is not None:
            state.health = health
            state.applied_version = _believed_version(kind, target, health)
            if health.get("config_version") is not None and state.applied_version is None:
                state.health_error = "reports a version not issued here"
            kind.read_health(target, health)
        state.save()
    if health is not None and catch_up(kind, target, state) is not None:
        state.refresh_from_db()
    return state


def _believed_version(
    kind: RolloutKind[Any, Any, Any], target: RolloutTarget, health: dict[str, Any]
) -> int | None:
    """The version a report says the target holds, if it is one we released to it.

    Even a signed report is the target's word: a version it was never sent (a restored
    database, or a compromised target claiming 2**63) must not steer the next version.
    The push that follows finds out what it really holds (:func:`_settle_stale`).
    """
    version = health.get("config_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    return version if kind.releases_of(target.pk).filter(version=version).exists() else None


def release_to_send(
    kind: RolloutKind[TargetT, ReleaseT, StateT], target: TargetT, state: StateT
) -> ReleaseT | None:
    """The release a target that reported ``state`` should be sent now, if any.

    Its latest release, when it holds an older version (it was down, or restarted
    without its document) and that release was not refused or replaced.
    """
    latest = kind.release_model.objects.latest_for(target.pk)
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


# --- Keeping releases fresh, keys moving, and changes flowing ---------------------------


def _latest(kind: RolloutKind[Any, ReleaseT, Any], target_id: int) -> ReleaseT | None:
    return kind.release_model.objects.latest_for(target_id)


def _trusts(release: Release | None) -> KeySet | None:
    if release is None:
        return None
    try:
        return KeySet.model_validate(release.document.get("trust"))
    except ValueError:
        return None


def _certificates_due(release: Release, renew: timedelta) -> bool:
    """A certificate the release carries expires within ``renew`` (the kind's builder
    re-issues it, for the same key, when it builds the next release)."""
    try:
        tls = TlsMaterial.model_validate(release.document["tls"])
    except (KeyError, ValueError):
        return False  # not enrolled: nothing to renew
    for pem in (tls.certificate, tls.ingress_certificate):
        if pem and load_certificate(pem).not_valid_after_utc - renew <= timezone.now():
            return True
    return False


def differs(kind: RolloutKind[Any, Any, Any], target: RolloutTarget) -> bool:
    """What ``target`` should hold now differs from its latest release (or it has none)."""
    latest = _latest(kind, target.pk)
    version = (latest.version if latest else 0) + 1
    wanted = kind.build(target, version, ReleaseStamp.now()).document()
    return latest is None or kind.content(wanted) != kind.content(latest.document)


def needs_release(kind: RolloutKind[Any, Any, Any], target: RolloutTarget) -> str | None:
    """Why ``target`` needs a new release now, or None: its latest one expires soon, holds
    a certificate that expires soon, names other keys than the keyring's, or (with
    ``rollout.on_change``) no longer matches the database (a change whose on-commit
    release was lost)."""
    latest = _latest(kind, target.pk)
    if latest is None:
        return None  # never released: the operator's (or a change's) first rollout
    renew = timedelta(seconds=settings.SANCTUM.rollout.renew_before_seconds)
    expires = latest.document.get("expires_at")
    if not expires or datetime.fromisoformat(expires) - renew <= timezone.now():
        return "its latest release expires soon"
    if _certificates_due(latest, timedelta(seconds=settings.SANCTUM.tls.renew_before_seconds)):
        return "its TLS certificate expires soon"
    if _trusts(latest) != target_trust():
        return "the keyring changed"
    if settings.SANCTUM.rollout.on_change and differs(kind, target):
        return "what it should hold changed"
    return None


def refresh(kind: RolloutKind[Any, Any, Any]) -> list[Release]:
    """A new release for each enabled target that :func:`needs_release`."""
    made = []
    for target in kind.targets():
        try:  # one target's trouble holds up no other's renewal
            reason = needs_release(kind, target)
            if reason is not None:
                log.info("%s %s gets a new release: %s", kind.name, target.name, reason)
                made += roll_out(kind, [target])
        except Exception:
            log.exception("%s %s: no new release this time", kind.name, target.name)
    return made


def _holds(kind: RolloutKind[Any, Any, Any], target: RolloutTarget, kid: str) -> bool:
    """``target`` has applied a release whose trust set names ``kid``."""
    state = kind.state_for(target.pk)
    if state.applied_version is None:
        return False
    held = kind.releases_of(target.pk).filter(version=state.applied_version).first()
    trust = _trusts(held)
    return trust is not None and kid in {k.kid for k in trust.keys}


def advance_keys() -> list[str]:
    """Retire keys past their overlap; activate a next key every target trusts already.

    Returns what changed (for the task's result). With ``keys.auto_activate`` off, next
    keys wait for ``sanctum keys activate``.
    """
    ring = keyring()
    changed = [f"retired {e.purpose} {e.kid}" for e in ring.retire_expired()]
    if not settings.SANCTUM.keys.auto_activate:
        return changed
    targets = [(kind, t) for kind in rollout_kinds() for t in kind.targets()]
    for entry in ring.entries():
        if entry.state != "next" or entry.purpose not in TARGET_PURPOSES:
            continue
        waiting = [t.name for kind, t in targets if not _holds(kind, t, entry.kid)]
        if waiting:
            log.info("next %s key waits for %d targets", entry.purpose, len(waiting))
            continue
        try:
            ring.activate(entry.purpose, settings.SANCTUM.keys.overlap_seconds)
        except KeyringError as exc:
            log.warning("next %s key not activated: %s", entry.purpose, exc)
            continue
        changed.append(f"activated {entry.purpose} {entry.kid}")
    return changed


def release_on_commit(kind_name: str) -> None:
    """Once the current transaction commits, release to every enabled target of
    ``kind_name`` whose document would differ from its latest release (nothing if the
    transaction rolls back, nothing for a change that alters no document).

    Domain apps call this from their change signals (``control_plane.core.signals``);
    with ``rollout.on_change`` off it does nothing (an operator rolls out by hand).
    Several changes in one transaction queue several callbacks; the first makes the
    releases and the others find nothing left that differs.
    """
    if not settings.SANCTUM.rollout.on_change:
        return

    def release() -> None:
        kind = rollout_kind(kind_name)
        for target in kind.targets():
            try:  # each target on its own: one that can't be released to stops no other
                if differs(kind, target):
                    roll_out(kind, [target])
                    log.info("change committed: released to %s %s", kind.name, target.name)
            except Exception:
                log.exception("change committed: no release to %s %s", kind.name, target.name)

    transaction.on_commit(release)
