"""Changes that alter what targets hold release to them when they commit.

A domain app lists the models its kind of target is built from; any save or delete of
one of them (or of a many-to-many link between them) queues one release of that kind
per transaction (``control_plane.core.rollout.release_on_commit``). Fixtures being
loaded (``raw``) are not changes.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save

from control_plane.core.rollout import release_on_commit


def release_on_change(kind_name: str, *sources: type[models.Model]) -> None:
    """Release ``kind_name`` after every committed change to any of ``sources``."""

    def changed(sender: type[models.Model], **kwargs: Any) -> None:
        if kwargs.get("raw"):
            return
        if kwargs.get("action", "post_").startswith("pre_"):
            return  # m2m: act once, after the links changed
        release_on_commit(kind_name)

    for source in sources:
        uid = f"sanctum-release-{kind_name}-{source._meta.label_lower}"
        post_save.connect(changed, sender=source, weak=False, dispatch_uid=uid + "-save")
        post_delete.connect(changed, sender=source, weak=False, dispatch_uid=uid + "-delete")
        for field in source._meta.many_to_many:
            through = field.remote_field.through
            m2m_changed.connect(changed, sender=through, weak=False, dispatch_uid=uid + "-m2m")
