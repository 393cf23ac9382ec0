"""``python -m control_plane serve``: the admin console and API under gunicorn.

Binds the management address from settings (``SANCTUM_CP_LISTEN__HOST``/``__PORT``),
collects static files for whitenoise, then replaces itself with gunicorn so signals
reach it directly. gunicorn prints ``SANCTUM_CP_READY admin=URL api=URL`` when listening.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve the control plane with gunicorn on the management address."

    def add_arguments(self, parser: CommandParser) -> None:
        listen = settings.SANCTUM.listen
        parser.add_argument("--host", default=listen.host)
        parser.add_argument("--port", type=int, default=listen.port)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--no-collectstatic", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["no_collectstatic"]:
            call_command("collectstatic", interactive=False, verbosity=0)
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:control_plane.gunicorn_config",
            "--bind",
            f"{options['host']}:{options['port']}",
            "--workers",
            str(options["workers"]),
        ]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606  (fixed argv, no shell)
