"""Logging for the data plane: ids, counts and durations, never content.

Exception *messages* can carry content (a library quoting its input), so the formatter
prints a logged exception's type and stack frames but not its message. That holds for
every logger in the process, uvicorn's included, not just for the calls we write.
"""

from __future__ import annotations

import logging
import sys
import traceback
from types import TracebackType

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class ContentSafeFormatter(logging.Formatter):
    def formatException(self, ei: _ExcInfo) -> str:  # type: ignore[override]
        exc_type, _, tb = ei
        frames = "".join(traceback.format_tb(tb)) if tb else ""
        return f"Traceback (most recent call last):\n{frames}{exc_type.__name__} (message withheld)"

    def formatStack(self, stack_info: str) -> str:
        return stack_info


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContentSafeFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Request lines are logged by our own middleware, with ids and no query strings.
    logging.getLogger("uvicorn.access").disabled = True
