"""Sanctum's control plane: a Django project (admin, REST API, Celery) on the management link.

The Celery app is imported here so that ``@shared_task`` binds to it wherever Django
starts (gunicorn, a worker, beat, a management command).
"""

from control_plane.celery import app as celery_app

__all__ = ["celery_app"]
