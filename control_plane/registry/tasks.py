"""Background work for model pins: hashing GGUF files (hundreds of MB to many GB)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context
from control_plane.registry.models import ModelPin
from control_plane.registry.services import verify_model_pin


@shared_task(
    acks_late=True,
    time_limit=1800,
    soft_time_limit=1700,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
)
def compute_model_pin_sha256(pin_id: int) -> str | None:
    """Compute (or re-check) a pin's sha256 from its file. Returns the hash status."""
    pin = ModelPin.objects.filter(pk=pin_id).first()
    if pin is None:
        return None
    with change_context(source=ChangeSource.TASK):
        return verify_model_pin(pin).hash_status
