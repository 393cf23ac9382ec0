"""Celery tasks for collection: take primary keys, call services, set delivery semantics.

Beat runs :func:`collect_fleet_usage` every ``SANCTUM_CP_LEDGER__COLLECT_INTERVAL_SECONDS``;
it queues one :func:`collect_node_usage` per enabled node, so a slow node holds up no
other. A run that dies (worker killed, broker gone) is simply run again: collection is
idempotent, and a node keeps every record until it is acknowledged.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from control_plane.audit.services import CollectError, attest_node, collect_node
from control_plane.fleet.models import Node

log = logging.getLogger(__name__)
_ledger = settings.SANCTUM.ledger
# Each page: a fetch and an ack (connect + read timeouts each), and the append between;
# before them, the node's statement and where it was logged (two more calls).
_COLLECT_TIME_LIMIT = int(
    (_ledger.max_pages_per_run + 1)
    * 2
    * (_ledger.connect_timeout_seconds + _ledger.timeout_seconds)
    + 60
)


@shared_task(
    acks_late=True,
    time_limit=_COLLECT_TIME_LIMIT,
    soft_time_limit=_COLLECT_TIME_LIMIT - 10,
    # A busy database (SQLite's write lock held past its timeout) passes; node errors are
    # recorded on the node's collection state and the next beat tick tries again.
    autoretry_for=(OperationalError,),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=3,
)
def collect_node_usage(node_id: int) -> str | None:
    """Collect one node's usage records into the ledger, then acknowledge them."""
    node = Node.objects.filter(pk=node_id, enabled=True).first()
    if node is None:
        return None
    return collect_node(node).summary()


@shared_task(acks_late=True, time_limit=60)
def collect_fleet_usage() -> int:
    """Beat's entry: one collection task per enabled node."""
    node_ids = list(Node.objects.enabled().values_list("pk", flat=True))
    for node_id in node_ids:
        collect_node_usage.delay(node_id)
    return len(node_ids)


@shared_task(acks_late=True, time_limit=120, autoretry_for=(OperationalError,), max_retries=3)
def attest_node_statement(node_id: int) -> int | None:
    """Log the node's statement now (it applied a config: what it runs changed), so the
    records it signs from now on name it. Collection does the same on each run."""
    node = Node.objects.filter(pk=node_id, enabled=True).first()
    if node is None:
        return None
    try:
        return attest_node(node)
    except CollectError as exc:
        log.warning("statement of node %s not logged: %s", node.name, exc)
        return None
