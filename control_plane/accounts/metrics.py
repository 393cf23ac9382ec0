"""Sign-in failures for /metrics (control_plane.core.metrics), from django-axes' table:
counts only, never a user name or an address."""

from __future__ import annotations

from collections.abc import Iterator

from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.core.metrics import gauge


class SignInCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        attempts = AccessAttempt.objects.all()
        failures = attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
        yield gauge(
            "sanctum_cp_login_failures",
            "failed sign-ins that count towards a lockout now (reset by a success, "
            "axes_reset, or the next attempt after the cool-off)",
            failures,
        )
        yield gauge(
            "sanctum_cp_lockouts",
            "user name and address pairs locked out now",
            attempts.filter(failures_since_start__gte=settings.AXES_FAILURE_LIMIT).count(),
        )
