"""``python -m control_plane beat``: Celery beat (polls node health, catches nodes up)."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run Celery beat (needs REDIS_URL); without a broker use `reconcile` instead."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.SANCTUM.eager_tasks:
            raise CommandError("REDIS_URL is not set: run `python -m control_plane reconcile`")
        argv = [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "control_plane",
            "beat",
            "--loglevel",
            options["loglevel"],
            "--schedule",
            settings.CELERY_BEAT_SCHEDULE_FILENAME,
        ]
        sys.stdout.flush()
        os.execv(sys.executable, argv)  # noqa: S606  (fixed argv, no shell)
