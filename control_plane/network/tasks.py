"""Celery tasks for gateways and peers: take primary keys, call services.

``acks_late`` with ``reject_on_worker_lost`` (in settings): a push whose worker dies is
redelivered, and a redelivered push is harmless (the agent answers 409 for a version it
holds, which is recorded as applied).
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.network.models import Gateway, GatewayRelease
from control_plane.network.rollout import (
    GatewayPushError,
    check_gateway,
    deliver_gateway_release,
    roll_out_gateways,
)
from control_plane.network.services import expire_peers as expire_peers_service

_rollout = settings.SANCTUM.rollout
_PUSH_TIME_LIMIT = int(_rollout.connect_timeout_seconds + _rollout.timeout_seconds) + 30
_HEALTH_TIME_LIMIT = int(_rollout.health_timeout_seconds) + _PUSH_TIME_LIMIT


@shared_task(
    acks_late=True,
    time_limit=_PUSH_TIME_LIMIT,
    soft_time_limit=_PUSH_TIME_LIMIT - 10,
    autoretry_for=(GatewayPushError,),
    retry_backoff=2,
    retry_backoff_max=_rollout.retry_backoff_max_seconds,
    retry_jitter=True,
    max_retries=settings.SANCTUM.push_max_retries,
)
def push_gateway_release(release_id: int) -> str | None:
    """Push one release to its gateway's agent; retried with backoff while it is down."""
    release = GatewayRelease.objects.filter(pk=release_id).first()
    if release is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return deliver_gateway_release(release)


@shared_task(acks_late=True, time_limit=_HEALTH_TIME_LIMIT, soft_time_limit=_HEALTH_TIME_LIMIT - 5)
def poll_gateway_health(gateway_id: int) -> str | None:
    """Record one gateway's health and handshakes; push its latest release if behind."""
    gateway = Gateway.objects.filter(pk=gateway_id, enabled=True).select_related("pool").first()
    if gateway is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return str(check_gateway(gateway).health_status)


@shared_task(acks_late=True, time_limit=60)
def poll_gateways_health() -> int:
    """Beat's entry: one health task per enabled gateway."""
    ids = list(Gateway.objects.enabled().values_list("pk", flat=True))
    for gateway_id in ids:
        poll_gateway_health.delay(gateway_id)
    return len(ids)


@shared_task(acks_late=True, time_limit=120)
def expire_peers() -> int:
    """Beat's entry: disable expired peers (reason in the trail), roll out their gateways."""
    with change_context(source=ChangeSource.TASK):
        expired = expire_peers_service()
        gateways = {peer.gateway_id: peer.gateway for peer in expired if peer.gateway.enabled}
        if gateways:
            roll_out_gateways(gateways.values())
    return len(expired)
