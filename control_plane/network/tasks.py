"""Celery tasks for peers: take primary keys, call services.

Gateway pushes and health polls are the rollout tasks of ``control_plane.core.tasks``
(kind ``"gateway"``).
"""

from __future__ import annotations

from celery import shared_task

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.core.rollout import roll_out
from control_plane.network.rollout import GATEWAYS
from control_plane.network.services import expire_peers as expire_peers_service


@shared_task(acks_late=True, time_limit=120)
def expire_peers() -> int:
    """Beat's entry: disable expired peers (reason in the trail), roll out their gateways."""
    with change_context(source=ChangeSource.TASK):
        expired = expire_peers_service()
        gateways = {peer.gateway_id: peer.gateway for peer in expired if peer.gateway.enabled}
        if gateways:
            roll_out(GATEWAYS, gateways.values())
    return len(expired)
