"""``python -m control_plane reconcile``: beat's work, without Celery.

With no broker (the embedded default) tasks run in-process and there is no beat: this
loop runs beat's own schedule (``CELERY_BEAT_SCHEDULE`` in settings: each kind of rollout
target's health poll and catch-up, peer expiry, usage collection), each job at its own
interval, in this process. One list of periodic jobs, so beat and the reconciler can't
drift apart. ``--interval`` caps every job's interval; ``--skip`` leaves a job out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string


@dataclass
class _Job:
    name: str
    task: Any
    args: tuple[Any, ...]
    interval: float
    due: float = 0.0


def _seconds(schedule: Any) -> float:
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, int | float):
        return float(schedule)
    raise CommandError(f"beat schedule entry is not an interval: {schedule!r}")


class Command(BaseCommand):
    help = (
        "Run beat's schedule in-process: health and catch-up of nodes and gateways, peer "
        "expiry, usage collection; each at its interval (or each once, with --once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="run every job at least this often (seconds; default: beat's schedule)",
        )
        parser.add_argument(
            "--skip",
            action="append",
            default=[],
            choices=sorted(settings.CELERY_BEAT_SCHEDULE),
            help="leave this job out (repeatable)",
        )
        parser.add_argument("--once", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = self._jobs(options["interval"], set(options["skip"]))
        start = time.monotonic()
        for job in jobs:
            job.due = start
        while True:
            for job in jobs:
                now = time.monotonic()
                if now >= job.due:
                    result = job.task(*job.args)
                    self.stdout.write(f"{job.name}: {result}")
                    job.due = now + job.interval
            if options["once"]:
                return
            wake = min(job.due for job in jobs)
            time.sleep(max(0.05, wake - time.monotonic()))

    def _jobs(self, cap: float | None, skip: set[str]) -> list[_Job]:
        jobs = []
        for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
            if name in skip:
                continue
            interval = _seconds(entry["schedule"])
            jobs.append(
                _Job(
                    name=name,
                    # Called directly, the task runs here; the tasks it queues run
                    # in-process too when there is no broker.
                    task=import_string(entry["task"]),
                    args=tuple(entry.get("args", ())),
                    interval=min(interval, cap) if cap else interval,
                )
            )
        if not jobs:
            raise CommandError("every job is skipped: nothing to do")
        return jobs
