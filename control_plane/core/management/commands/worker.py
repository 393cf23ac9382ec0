"""``python -m control_plane worker``: a Celery worker for pushes, health and hashing."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run a Celery worker (needs REDIS_URL)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--hostname", default="sanctum-cp@%h")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.SANCTUM.eager_tasks:
            raise CommandError("REDIS_URL is not set: tasks run in-process, a worker has no work")
        argv = [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "control_plane",
            "worker",
            "--loglevel",
            options["loglevel"],
            "--concurrency",
            str(options["concurrency"]),
            "--hostname",
            options["hostname"],
            "--without-gossip",
            "--without-mingle",
        ]
        sys.stdout.flush()
        os.execv(sys.executable, argv)  # noqa: S606  (fixed argv, no shell)
