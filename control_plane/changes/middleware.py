"""Opens a change context for each request, so edits are attributed to the signed-in user."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from control_plane.changes.choices import ChangeSource
from control_plane.changes.services import change_context


class ChangeContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        source = ChangeSource.API if request.path.startswith("/api/") else ChangeSource.ADMIN
        # Read the user lazily: DRF authenticates tokens inside the view and then sets
        # request.user on this very HttpRequest.
        with change_context(source=source, user_getter=lambda: getattr(request, "user", None)):
            return self.get_response(request)
