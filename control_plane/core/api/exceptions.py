"""Turn errors raised by services into API answers with the right status.

Services raise Django's ``ValidationError`` (with field names, so the API answers with
field-level errors, 400) and :class:`~control_plane.core.errors.Conflict` (409). A
delete that a protecting foreign key refuses (a client that still has knowledge bases) is
409 too.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from control_plane.core.errors import Conflict


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        detail: Any = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, Conflict):
        return Response({"detail": str(exc), "code": exc.code}, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, ProtectedError):
        kinds = sorted({str(o._meta.verbose_name_plural) for o in exc.protected_objects})
        return Response(
            {"detail": f"Delete its {', '.join(kinds)} first.", "code": "protected"},
            status=status.HTTP_409_CONFLICT,
        )
    return drf_exception_handler(exc, context)
