"""The control plane's Prometheus metrics: ``GET /metrics`` with a bearer token.

Every series is read from the database (or Redis) at scrape time, so it is the same
whichever gunicorn worker answers. The core reports what it owns (each rollout kind's
targets, Celery's queue); domain apps add theirs with :func:`register_collector` in
their ``ready()`` (the ledger, collection, failed logins), as they register rollout
kinds. Labels are target names, kinds and states: never content, never a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Iterator
from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.core.models import rollout_state
from control_plane.core.rollout import rollout_kinds
from shared.metrics import read_token

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=False)


def register_collector(collector: Collector) -> None:
    REGISTRY.register(collector)


class RolloutCollector(Collector):
    """Each enabled target's rollout state and health, per kind (nodes, gateways)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "sanctum_cp_rollout_state",
            "1 for the state each enabled target is in against its latest release",
            labels=["kind", "target", "state"],
        )
        healthy = GaugeMetricFamily(
            "sanctum_cp_target_healthy",
            "1 when the target's last health answer was ok",
            labels=["kind", "target"],
        )
        for kind in rollout_kinds():
            targets = kind.target_model.objects.enabled().with_rollout().select_related("state")
            for target in targets:
                held = target.current_state()
                where = rollout_state(
                    target.latest_version,
                    target.latest_status,
                    held.applied_version if held else None,
                )
                state.add_metric([kind.name, target.name, str(where)], 1)
                ok = held is not None and held.health_status == "ok"
                healthy.add_metric([kind.name, target.name], int(ok))
        yield state
        yield healthy


class CeleryQueueCollector(Collector):
    """Tasks waiting in the broker's default queue (with Redis only)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        url = settings.CELERY_BROKER_URL
        if not url or not url.startswith("redis"):
            return
        import redis

        family = GaugeMetricFamily(
            "sanctum_cp_celery_queue_length", "tasks waiting in the broker", labels=["queue"]
        )
        try:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            family.add_metric(["celery"], client.llen("celery"))
        except redis.RedisError:
            logger.warning("metrics: the broker did not answer")
            return
        yield family


register_collector(RolloutCollector())
register_collector(CeleryQueueCollector())


@cache
def _token_digest() -> bytes | None:
    path = settings.SANCTUM_METRICS_TOKEN_FILE
    return None if path is None else hashlib.sha256(read_token(path)).digest()


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The exposition, to a request with ``Authorization: Bearer <token>``; 404 when no
    token file is configured (no metrics), 401 without the right token."""
    expected = _token_digest()
    if expected is None:
        return HttpResponse("not found\n", status=404, content_type="text/plain")
    header = request.headers.get("Authorization", "")
    presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), expected):
        response = HttpResponse("a bearer token is required\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


def labelled(
    name: str, text: str, labels: list[str], rows: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family
