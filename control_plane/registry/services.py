"""Model-pin use cases: pin a version (by path or by source), compute and verify its
file's sha256, stage a new version on its nodes and let it go live when they are ready,
roll back. And the software releases nodes may run: record one (by its digest, with its
manifest if given), allow it, disallow it, and the list of allowed digests.

Staging (docs/operations.md, "Upgrading a model"): a staged pin whose file is verified
travels in the ``staged`` part of the bundles of the nodes that serve the pin it
replaces; each node verifies the file, loads it if it has room, and says so in its
health. The pin goes live (:func:`_go_live`: the two pins swap in one transaction)
when every node that must prepare it reports it ready (:func:`staging_report`), or
when an admin forces it (:func:`go_live_now`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from control_plane.changes.choices import ChangeAction
from control_plane.clients.models import Client
from control_plane.core.choices import HealthStatus
from control_plane.fleet.models import Node, NodePool, NodeState, default_pool_id
from control_plane.registry.choices import HashStatus
from control_plane.registry.models import ModelPin, SoftwareRelease
from control_plane.registry.querysets import SERVABLE_HASH_STATUSES
from shared.canonical import CanonicalJSONError
from shared.config import file_sha256
from shared.software import release_digest, release_manifest

log = logging.getLogger(__name__)

# A node counts toward a staged pin's readiness while its latest health poll got an
# "ok" answer no older than this many polls (at least STAGING_HEALTH_SECONDS): one that
# is down (its poll failed) or went quiet (no poll read it) does not hold a pin back.
STAGING_HEALTH_POLLS = 3
STAGING_HEALTH_SECONDS = 120.0
# What a node reports for a staged model it can switch to ("ready": file verified, no
# room to load it beside the old one: it drains the old one first). Anything else
# ("fetching" its file from the storage link, "checking" its hash, "failed") waits.
STAGED_READY = ("loaded", "ready")


def pin_model(
    *,
    name: str,
    version: str,
    path: str = "",
    source: str = "",
    sha256: str = "",
    size: int | None = None,
    context_size: int = 2048,
    chat_template: str = "",
    gpu_layers: int | None = None,
    clients: Iterable[Client] | None = None,
    pools: Iterable[NodePool] | None = None,
    supersede: bool = False,
) -> ModelPin:
    """Pin ``name`` to ``version`` of a GGUF file; the hash task follows.

    The file is at ``path`` (on the control plane and the nodes: the task hashes it), or
    nodes fetch it from ``source`` on the storage link and check it against ``sha256``
    and ``size``, given from the publisher's checksums: the control plane never reads
    it, and the pin is ``declared``, usable at once (``ModelPin.clean`` validates both).

    A name has one enabled pin. If it has one already, this refuses (a field error on
    ``version``) unless ``supersede`` says to replace it: the new pin is then *staged*
    (not enabled) and inherits the old one's clients and pools when those are not given;
    the old pin serves until the new file's hash is verified, and then the two swap in
    one transaction (:func:`verify_model_pin`). So no rollout ever ships the model
    without a pin while the new file is hashed, and a file that fails leaves the old
    pin serving. :func:`roll_back_pin` returns to the old one. Without pools,
    it is placed on its clients' pools (none: the default pool). Nodes serve the new pin
    after its hash is verified and the next rollout.
    """
    with transaction.atomic():
        if ModelPin.objects.filter(name=name, version=version).exists():
            raise ValidationError({"version": f"{name} is already pinned at {version}."})
        current = ModelPin.objects.select_for_update().filter(name=name, enabled=True).first()
        if current is not None and not supersede:
            raise ValidationError(
                {
                    "version": f"{name} is pinned at {current.version}. Set supersede to "
                    "replace that pin with this one."
                }
            )
        inherited: list[Client] = []
        inherited_pools: list[NodePool] = []
        if current is not None:
            inherited = list(current.clients.all())
            inherited_pools = list(current.pools.all())
        pin = ModelPin(
            name=name,
            version=version,
            path=path,
            source=source,
            sha256=sha256,
            size=size,
            context_size=context_size,
            chat_template=chat_template,
            gpu_layers=gpu_layers,
            enabled=current is None,
            staged=current is not None,
            supersedes=current,
        )
        pin.full_clean(exclude=["clients", "pools"])
        pin.save()
        users = list(clients) if clients is not None else inherited
        pin.clients.set(users)
        pin.pools.set(_placement(pools, inherited_pools, users))
        transaction.on_commit(lambda: request_pin_verification(pin))
    return pin


def _placement(
    pools: Iterable[NodePool] | None, inherited: list[NodePool], clients: list[Client]
) -> list[NodePool] | list[int]:
    """Where a new pin goes: the pools given, else the superseded pin's, else those of
    the clients that may use it, else the default pool."""
    if pools is not None:
        return list(pools)
    if inherited:
        return inherited
    placed = sorted({c.pool_id for c in clients if c.pool_id is not None})
    return placed or [default_pool_id()]


def request_pin_verification(pin: ModelPin) -> None:
    """Queue the hash task for ``pin`` (runs at once when there is no broker)."""
    from control_plane.registry.tasks import compute_model_pin_sha256

    compute_model_pin_sha256.delay(pin.pk)


def verify_model_pin(pin: ModelPin) -> ModelPin:
    """Hash the pin's file. The first hash is the pin; later ones must match it.

    A pin by source is not read here (the control plane holds no copy): its declared
    hash stands, and the nodes check the file they fetch against it.

    A file that can't be read leaves the pin ``failed``; one whose hash differs from the
    pinned one leaves it ``mismatch`` (the pinned hash is kept, so nodes keep refusing
    the changed file). Either way the reason is recorded and the pin drops out of bundles.
    A staged pin whose hash is verified takes over from the pin it supersedes.
    """
    digest: str | None
    if pin.source:
        digest, error, verified = pin.sha256, "", HashStatus.DECLARED
    else:
        verified = HashStatus.VERIFIED
        try:
            digest, error = file_sha256(pin.path), ""
        except OSError as exc:
            digest, error = None, f"can't read {pin.path}: {exc.strerror or type(exc).__name__}"
    with transaction.atomic():
        locked = ModelPin.objects.select_for_update().get(pk=pin.pk)
        locked.hash_checked_at = timezone.now()
        if digest is None:
            locked.hash_status, locked.hash_error = HashStatus.FAILED, error
        elif not locked.sha256 or locked.sha256 == digest:
            locked.sha256, locked.hash_status, locked.hash_error = digest, verified, ""
        else:
            locked.hash_status = HashStatus.MISMATCH
            locked.hash_error = (
                f"file hash is {digest[:12]}..., pinned {locked.sha256[:12]}...: "
                "pin the new file as a new version"
            )
        locked.set_change_action(ChangeAction.VERIFY_HASH)
        locked.save()
        # A staged pin without nodes to prepare it goes live now; otherwise the bundle
        # this save releases stages it on them, and their health reports move it on.
        if locked.staged and locked.hash_status == verified and staging_report(locked).ready:
            _go_live(locked)
    log.info("model pin %s hash %s", locked.pk, locked.hash_status)
    return locked


@dataclass(frozen=True)
class StagingReport:
    """Where a staged pin stands on the nodes that must prepare it, by node name."""

    ready_on: tuple[str, ...] = ()
    waiting_on: dict[str, str] | None = None  # node: why it is not ready yet
    not_counted: dict[str, str] | None = None  # node: why it does not hold the pin back

    @property
    def ready(self) -> bool:
        return not self.waiting_on

    def as_dict(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "ready_on": list(self.ready_on),
            "waiting_on": self.waiting_on or {},
            "not_counted": self.not_counted or {},
        }


def staging_nodes(pin: ModelPin) -> list[Node]:
    """The nodes that must prepare staged ``pin``: enabled, not draining, on a pool of
    both ``pin`` and the pin of its name that serves now (the nodes whose bundles stage
    it). A pool that gains the model only with ``pin`` has nothing to keep serving."""
    current = ModelPin.objects.servable().filter(name=pin.name).exclude(pk=pin.pk).first()
    if current is None:
        return []
    pools = set(pin.pools.values_list("pk", flat=True)) & set(
        current.pools.values_list("pk", flat=True)
    )
    return list(
        Node.objects.filter(enabled=True, draining=False, pool__in=pools)
        .select_related("state")
        .order_by("name")
    )


def staging_report(pin: ModelPin) -> StagingReport:
    """Whether staged ``pin`` may go live: its file is verified, and every node of
    :func:`staging_nodes` that answered health ("ok") in the last
    ``STAGING_HEALTH_POLLS`` polls (at least ``STAGING_HEALTH_SECONDS``) reports it
    loaded or ready (or serves it already).
    A node that has not answered that recently is not counted, so a node that is down
    holds no upgrade back (it gets the new pin when it is back, through catch-up).
    No such node: the verification alone decides."""
    if pin.hash_status not in SERVABLE_HASH_STATUSES or not pin.sha256:
        return StagingReport(waiting_on={"": "its file's hash is not verified"})
    window = timedelta(
        seconds=max(
            STAGING_HEALTH_SECONDS,
            STAGING_HEALTH_POLLS * settings.SANCTUM.rollout.health_poll_seconds,
        )
    )
    cutoff = timezone.now() - window
    ready, waiting, not_counted = [], {}, {}
    for node in staging_nodes(pin):
        state: NodeState | None = getattr(node, "state", None)
        if state is None or state.health_checked_at is None or state.health_checked_at < cutoff:
            not_counted[node.name] = "no health read recently"
            continue
        if state.health_status != HealthStatus.OK or not isinstance(state.health, dict):
            not_counted[node.name] = f"health {state.health_status}"
            continue
        reported = _staged_state(state.health, pin.sha256)
        if reported in STAGED_READY:
            ready.append(node.name)
        else:
            waiting[node.name] = reported
    return StagingReport(tuple(ready), waiting, not_counted)


def _staged_state(health: dict[str, object], sha256: str) -> str:
    """What a node's health report says of the model file ``sha256``."""
    models = health.get("models")
    if isinstance(models, list) and any(
        isinstance(m, dict) and m.get("sha256") == sha256 for m in models
    ):
        return "loaded"  # it serves it already
    staged = health.get("staged")
    for entry in staged if isinstance(staged, list) else []:
        if isinstance(entry, dict) and entry.get("sha256") == sha256:
            state = str(entry.get("state"))
            if state == "failed":
                return f"failed: {str(entry.get('reason') or '')[:200]}"
            return state
    return "not staged on it yet"


def go_live_when_ready(pin: ModelPin) -> bool:
    """Let staged ``pin`` go live if :func:`staging_report` says it may; whether it did."""
    with transaction.atomic():
        locked = ModelPin.objects.select_for_update().get(pk=pin.pk)
        if not locked.staged or not staging_report(locked).ready:
            return False
        return _go_live(locked)


def advance_staged_pins(pools: Iterable[int] | None = None) -> list[ModelPin]:
    """:func:`go_live_when_ready` for every verified staged pin (on ``pools``, if given);
    the pins that went live. Called after each node health read."""
    pins = ModelPin.objects.filter(staged=True, hash_status__in=SERVABLE_HASH_STATUSES)
    if pools is not None:
        pins = pins.filter(pools__in=list(pools)).distinct()
    return [pin for pin in pins.order_by("created_at") if go_live_when_ready(pin)]


def go_live_now(pin: ModelPin) -> ModelPin:
    """Admin's override: staged ``pin`` goes live without waiting for its nodes (one
    that is stuck, or reports a failure the admin accepts). Its file must be verified.
    Nodes that have not prepared it load it when the bundle reaches them (the old
    version drains first where there is no room). Raises ``ValidationError``."""
    with transaction.atomic():
        locked = ModelPin.objects.select_for_update().get(pk=pin.pk)
        if not locked.staged:
            raise ValidationError({"staged": "Only a staged pin can go live."})
        if locked.hash_status not in SERVABLE_HASH_STATUSES:
            raise ValidationError(
                {"hash_status": "Its file's hash is not verified: verify it first."}
            )
        if not _go_live(locked):
            raise ValidationError(
                {"supersedes": "Another pin of this model went live meanwhile; pin anew."}
            )
    log.info("model pin %s forced live", locked.pk)
    return locked


def _go_live(staged: ModelPin) -> bool:
    """Enable ``staged`` and retire the pin of its name that serves now, in the caller's
    transaction, so every release built sees one or the other and never neither. If
    another pin of the name went live meanwhile (a newer staged one, a rollback), this
    one stays staged: going live would silently undo that. Returns whether it went live."""
    enabled = ModelPin.objects.select_for_update().filter(name=staged.name, enabled=True)
    current = enabled.exclude(pk=staged.pk).first()
    if current is not None and current.pk != staged.supersedes_id:
        log.info("model pin %s stays staged: pin %s went live meanwhile", staged.pk, current.pk)
        return False
    if current is not None:
        current.enabled = False
        current.save()
    staged.enabled, staged.staged = True, False
    staged.save()
    log.info("model pin %s live", staged.pk)
    return True


def roll_back_pin(pin: ModelPin) -> ModelPin:
    """Return to the pin ``pin`` replaced: it serves again and ``pin`` is disabled, in
    one transaction (rolled out by itself). Raises ``ValidationError`` when there is
    nothing to return to."""
    with transaction.atomic():
        locked = ModelPin.objects.select_for_update().get(pk=pin.pk)
        if not locked.enabled or locked.supersedes_id is None:
            raise ValidationError(
                {"supersedes": "Only a serving pin that replaced another can roll back."}
            )
        previous = ModelPin.objects.select_for_update().get(pk=locked.supersedes_id)
        # A pin by source needs no file here: nodes still hold it, or fetch it again.
        if previous.hash_status not in SERVABLE_HASH_STATUSES or (
            previous.path and not os.path.isfile(previous.path)
        ):
            raise ValidationError(
                {
                    "supersedes": f"{previous} can't serve again: its file is not verified "
                    "or no longer there. Verify it, or pin a new version."
                }
            )
        locked.enabled = False
        locked.save()
        previous.enabled, previous.staged = True, False
        previous.save()
    log.info("model pin %s rolled back to %s", locked.pk, previous.pk)
    return previous


# --- software releases ----------------------------------------------------------------


def record_release(
    *,
    digest: str = "",
    name: str = "",
    manifest: dict[str, Any] | None = None,
) -> SoftwareRelease:
    """Record a release by its ``digest``, or by its ``manifest`` (the digest is then
    computed from it; both given, they must agree). A new release is not allowed yet:
    :func:`allow_release` does that, as its own decision in the trail.

    Raises ``ValidationError`` (by field) for a malformed digest, a manifest that is not
    one or hashes to another digest, and a digest already recorded.
    """
    if not digest and manifest is not None:
        try:
            digest = release_digest(manifest)
        except (CanonicalJSONError, TypeError) as exc:
            raise ValidationError({"manifest": f"Not canonical JSON: {exc}."}) from None
    with transaction.atomic():
        if SoftwareRelease.objects.filter(digest=digest).exists():
            raise ValidationError({"digest": f"Release {digest[:12]}... is already recorded."})
        release = SoftwareRelease(digest=digest, name=name, manifest=manifest)
        release.full_clean()
        release.save()
    log.info("software release %s recorded", release.pk)
    return release


def allow_release(release: SoftwareRelease) -> SoftwareRelease:
    """Vouch for nodes that run ``release``: it is in the allowed-releases file from now
    on (a no-op for one already allowed)."""
    return _set_allowed(release, allowed=True)


def disallow_release(release: SoftwareRelease) -> SoftwareRelease:
    """Stop accepting ``release`` (a no-op for one not allowed)."""
    return _set_allowed(release, allowed=False)


def _set_allowed(release: SoftwareRelease, *, allowed: bool) -> SoftwareRelease:
    with transaction.atomic():
        locked = SoftwareRelease.objects.select_for_update().get(pk=release.pk)
        if locked.allowed != allowed:
            locked.allowed = allowed
            if allowed:
                locked.allowed_at = timezone.now()
            else:
                locked.disallowed_at = timezone.now()
            locked.save()
            log.info("software release %s allowed=%s", locked.pk, allowed)
    return locked


def allow_this_release(name: str = "this installation") -> SoftwareRelease:
    """Record (if new) and allow the release this control plane's own installation is:
    for a node that runs from the same installation (``sanctum up``, the demo)."""
    manifest = release_manifest()
    digest = release_digest(manifest)
    release = SoftwareRelease.objects.filter(digest=digest).first()
    if release is None:
        release = record_release(digest=digest, name=name, manifest=manifest)
    return allow_release(release)


def allowed_release_digests() -> list[str]:
    """The digests of the releases nodes may run, sorted."""
    return sorted(SoftwareRelease.objects.allowed().values_list("digest", flat=True))
