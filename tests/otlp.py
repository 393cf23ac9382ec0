"""A tiny OTLP/HTTP receiver for the tracing tests: the collector's end, on loopback.

It accepts ``POST /v1/traces`` with protobuf bodies (gzip or not), keeps each body as
received and decoded (``ExportTraceServiceRequest``), and answers as a collector does.
The exporters and instrumentations under test are the real ones; only the collector
is ours, so the tests can read every byte that left the process.
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import text_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class OtlpReceiver:
    """``with OtlpReceiver() as r:`` serves on ``r.endpoint`` until the block ends."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # as sent (after Content-Encoding is undone)
        self.requests: list[ExportTraceServiceRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.bodies.append(body)
                    receiver.requests.append(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[Any]:
        """Every span received so far, each with its service name as ``.service``."""
        with self._lock:
            requests = list(self.requests)
        out = []
        for request in requests:
            for rs in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in rs.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append((service, span))
        return out

    def texts(self) -> dict[str, str]:
        """Each body as bytes (latin-1, so any byte sequence shows) and as protobuf text."""
        with self._lock:
            pairs = list(zip(self.bodies, self.requests, strict=True))
        texts = {}
        for i, (body, request) in enumerate(pairs):
            texts[f"body {i}"] = body.decode("latin-1")
            texts[f"decoded {i}"] = text_format.MessageToString(request, as_utf8=True)
        return texts

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[Any]:
        """The spans once ``predicate(spans)`` holds; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for _, s in spans})
                raise AssertionError(f"spans never arrived; got {names}")
            time.sleep(0.1)


def attributes(span: Any) -> dict[str, Any]:
    """A decoded span's attributes as plain values."""
    out: dict[str, Any] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out
