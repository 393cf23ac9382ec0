"""The Celery app. Broker: Redis from ``REDIS_URL``; without it tasks run in-process.

Run a worker with ``python -m control_plane worker`` and beat with
``python -m control_plane beat`` (see docs/operations.md).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings")

app = Celery("control_plane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
