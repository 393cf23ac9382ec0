"""Celery tasks for rollout: take primary keys, call services, set delivery semantics.

``acks_late`` with ``reject_on_worker_lost`` (in settings): a push whose worker dies is
redelivered, and a redelivered push is harmless (the node answers 409 for a version it
holds, which is recorded as applied).
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.fleet.models import ConfigRelease, Node
from control_plane.fleet.services import PushTransientError, check_node, deliver_release

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
def push_release(release_id: int) -> str | None:
    """Push one release to its node; retried with backoff while the node is unreachable."""
    release = ConfigRelease.objects.filter(pk=release_id).first()
    if release is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return deliver_release(release).status


@shared_task(acks_late=True, time_limit=_HEALTH_TIME_LIMIT, soft_time_limit=_HEALTH_TIME_LIMIT - 5)
def poll_node_health(node_id: int) -> str | None:
    """Record one node's health and push its latest release if it is behind."""
    node = Node.objects.filter(pk=node_id, enabled=True).first()
    if node is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return check_node(node).health_status


@shared_task(acks_late=True, time_limit=60)
def poll_fleet_health() -> int:
    """Beat's entry: one health task per enabled node, so a hung node holds up no other."""
    node_ids = list(Node.objects.enabled().values_list("pk", flat=True))
    for node_id in node_ids:
        poll_node_health.delay(node_id)
    return len(node_ids)
