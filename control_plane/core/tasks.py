"""Celery tasks for rollout, for every kind of target: take a kind's name and primary keys,
call the rollout services, set delivery semantics.

``acks_late`` with ``reject_on_worker_lost`` (in settings): a push whose worker dies is
redelivered, and a redelivered push is harmless (the target answers 409 for a version it
holds, which is recorded as applied).
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.core.rollout import (
    PushTransientError,
    advance_keys,
    check_health,
    deliver,
    refresh,
    rollout_kind,
    rollout_kinds,
)
from control_plane.core.signing import publish

_rollout = settings.SANCTUM.rollout
# A push's worst case is connect + read timeouts; leave room for the database writes.
_PUSH_TIME_LIMIT = int(_rollout.connect_timeout_seconds + _rollout.timeout_seconds) + 30
_HEALTH_TIME_LIMIT = int(_rollout.health_timeout_seconds) + _PUSH_TIME_LIMIT


@shared_task(
    acks_late=True,
    time_limit=_PUSH_TIME_LIMIT,
    soft_time_limit=_PUSH_TIME_LIMIT - 10,
    autoretry_for=(PushTransientError,),
    retry_backoff=2,
    retry_backoff_max=_rollout.retry_backoff_max_seconds,
    retry_jitter=True,
    max_retries=settings.SANCTUM.push_max_retries,
)
def push_release(kind: str, release_id: int) -> str | None:
    """Push one release to its target; retried with backoff while it is unreachable."""
    rollout = rollout_kind(kind)
    release = rollout.release_model.objects.filter(pk=release_id).first()
    if release is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return str(deliver(rollout, release).status)


@shared_task(acks_late=True, time_limit=_HEALTH_TIME_LIMIT, soft_time_limit=_HEALTH_TIME_LIMIT - 5)
def poll_health(kind: str, target_id: int) -> str | None:
    """Record one target's health and push its latest release if it is behind."""
    rollout = rollout_kind(kind)
    target = rollout.targets().filter(pk=target_id).first()
    if target is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return str(check_health(rollout, target).health_status)


@shared_task(acks_late=True, time_limit=60)
def poll_all_health(kind: str) -> int:
    """Beat's entry: one health task per enabled target, so a hung one holds up no other."""
    target_ids = list(rollout_kind(kind).targets().values_list("pk", flat=True))
    for target_id in target_ids:
        poll_health.delay(kind, target_id)
    return len(target_ids)


@shared_task(acks_late=True, time_limit=120)
def keep_releases_fresh() -> list[str]:
    """Beat's entry: advance key rotations, then re-release what expires soon or names
    other keys than the keyring's (control_plane.core.rollout.refresh)."""
    with change_context(source=ChangeSource.TASK):
        changed = advance_keys()
        for kind in rollout_kinds():
            made = refresh(kind)
            if made:
                changed.append(f"{len(made)} {kind.name} releases")
    publish()  # last: renewing releases never waits on the published copy
    return changed
