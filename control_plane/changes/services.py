"""Who is changing things right now, and writing that into the change trail.

A change context names the actor and the source. The middleware opens one per request
(the user is read when a change is recorded, so DRF's token authentication, which
happens inside the view, is seen too); services called from tasks and management
commands open their own with :func:`change_context`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AnonymousUser
from django.contrib.contenttypes.models import ContentType

from control_plane.changes.choices import ChangeSource
from control_plane.changes.models import ObjectChange

if TYPE_CHECKING:
    # AUTH_USER_MODEL: operators are django.contrib.auth users.
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class ChangeContext:
    """The actor of the changes made while this context is open."""

    source: str
    user: User | None = None
    # For requests: resolves the user when a change is recorded (after authentication).
    user_getter: Callable[[], User | AnonymousUser | None] | None = None

    def actor(self) -> User | None:
        user = self.user_getter() if self.user_getter else self.user
        if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated:
            return None
        return user


_current: ContextVar[ChangeContext | None] = ContextVar("sanctum_change_context", default=None)


@contextlib.contextmanager
def change_context(
    source: str = ChangeSource.SYSTEM,
    user: User | None = None,
    user_getter: Callable[[], User | AnonymousUser | None] | None = None,
) -> Iterator[ChangeContext]:
    """Attribute the changes made inside the ``with`` block to ``user`` via ``source``."""
    context = ChangeContext(source=source, user=user, user_getter=user_getter)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_change_context() -> ChangeContext:
    return _current.get() or ChangeContext(source=ChangeSource.SYSTEM)


def record_change(
    obj: Any,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> ObjectChange:
    """Append one row to the trail for ``obj``; call it inside the change's transaction.

    ``before``/``after`` must already be restricted to logged metadata (the model's
    ``snapshot()``); this function writes them as given.
    """
    context = current_change_context()
    user = context.actor()
    return ObjectChange.objects.create(
        user=user,
        user_name=user.get_username() if user is not None else "",
        source=context.source,
        action=action,
        changed_object_type=ContentType.objects.get_for_model(obj, for_concrete_model=True),
        changed_object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        prechange_data=before,
        postchange_data=after,
    )
