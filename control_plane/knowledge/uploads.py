"""Uploads stay in RAM: the one upload handler the control plane installs.

Django's default handlers spill a file over ``FILE_UPLOAD_MAX_MEMORY_SIZE`` (2.5 MB) to a
temporary file; a document's bytes must never touch the control plane's disk. This
handler is Django's ``MemoryFileUploadHandler`` made to take every file into memory,
whatever its size, and to refuse a request over ``SANCTUM_CP_KNOWLEDGE__MAX_UPLOAD_BYTES``
(413) before reading its body. ``settings.FILE_UPLOAD_HANDLERS`` lists only this one, so
no view (and no CSRF check that reads the form) can spill a file to disk.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import MemoryFileUploadHandler
from rest_framework import status
from rest_framework.exceptions import APIException


def max_upload_bytes() -> int:
    return int(settings.SANCTUM.knowledge.max_upload_bytes)


class UploadTooLarge(APIException):
    """A request bigger than the per-request cap (the API answers 413)."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "upload_too_large"

    def __init__(self, size: int | None = None) -> None:
        limit = max_upload_bytes()
        shown = f"{size} bytes" if size is not None else "the upload"
        super().__init__(
            f"{shown} is over the control plane's limit of {limit} bytes per request "
            "(SANCTUM_CP_KNOWLEDGE__MAX_UPLOAD_BYTES); send the files in smaller batches"
        )


def check_content_length(meta: Any) -> None:
    """Refuse (413) a request whose declared body is over the cap, before reading it."""
    try:
        size = int(meta.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        size = 0
    if size > max_upload_bytes():
        raise UploadTooLarge(size)


class InMemoryUploadHandler(MemoryFileUploadHandler):
    """Every uploaded file in memory (``InMemoryUploadedFile``), never a temporary file."""

    def handle_raw_input(
        self,
        input_data: Any,
        META: Any,
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length > max_upload_bytes():
            raise UploadTooLarge(content_length)
        self.received = 0
        self.activated = True  # the parent only takes files under FILE_UPLOAD_MAX_MEMORY_SIZE

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        # The body is read only up to its Content-Length, which was checked; this is the
        # backstop should a server hand over more.
        self.received += len(raw_data)
        if self.received > max_upload_bytes():
            raise UploadTooLarge()
        return super().receive_data_chunk(raw_data, start)
