"""Gunicorn settings used by ``python -m control_plane serve``.

``when_ready`` prints one ``SANCTUM_CP_READY`` line with the address actually bound (the
port may have been 0), so a supervisor such as ``sanctum up`` can wait for it.
"""

from __future__ import annotations

import sys
from typing import Any

wsgi_app = "control_plane.wsgi:application"
accesslog = "-"
# A rollout without a broker pushes inside the request, and loading a knowledge base
# waits for the nodes to embed its files (SANCTUM_CP_KNOWLEDGE__NODE_TIMEOUT_SECONDS,
# 300 by default): leave both time to finish.
timeout = 600
graceful_timeout = 20


def when_ready(server: Any) -> None:
    host, port = server.LISTENERS[0].sock.getsockname()[:2]
    base = f"http://{host}:{port}"
    print(f"SANCTUM_CP_READY admin={base}/admin/ api={base}/api/", flush=True)
    sys.stdout.flush()
