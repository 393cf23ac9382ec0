"""Tracing in the control plane: Django's requests and Celery's tasks, content-free.

Each case runs in a child process, since the instrumentation is installed when Django
sets up (the core app's ready()) and only when SANCTUM_CP_TRACING__OTLP_ENDPOINT is set:
the child makes requests with the Django test client and runs a task eagerly (as the
tests and a broker-less control plane do), then flushes its spans to the test's
receiver (tests/otlp.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.canary import new_marker, texts_containing
from tests.conftest import REPO, child_env
from tests.otlp import OtlpReceiver, attributes

SCRIPT = r"""
import json, sys, threading
import django
django.setup()
from django.conf import settings
from django.test import Client
from opentelemetry import trace
from django.core.management import call_command
from control_plane.celery import app

marker = sys.argv[1]
call_command("migrate", verbosity=0)  # API tokens are looked up in the database

@app.task(name="sanctum_test.echo")
def echo(text):
    return len(text)

client = Client(HTTP_AUTHORIZATION=f"Token {marker}", HTTP_USER_AGENT=marker, HTTP_HOST="localhost")
codes = [
    client.get(f"/api/clients/?search={marker}").status_code,
    Client(HTTP_HOST="localhost").get(f"/{marker}/?{marker}=1").status_code,
]
echo.delay(marker)
provider = trace.get_tracer_provider()
if hasattr(provider, "shutdown"):
    provider.shutdown()
print(json.dumps({
    "codes": codes,
    "otel_middleware": [m for m in settings.MIDDLEWARE if "opentelemetry" in m],
    "provider": type(provider).__name__,
    "threads": [t.name for t in threading.enumerate() if t.name.startswith("Otel")],
}))
"""


def _run(data_dir: Path, marker: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, marker],
        cwd=REPO,
        env=child_env(
            DJANGO_SETTINGS_MODULE="tests.control_plane.settings",
            SANCTUM_CP_DATA_DIR=str(data_dir),
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_requests_and_tasks_are_traced_without_content(tmp_path: Path):
    marker = new_marker()
    with OtlpReceiver() as receiver:
        out = _run(tmp_path, marker, SANCTUM_CP_TRACING__OTLP_ENDPOINT=receiver.endpoint)
        spans = [span for service, span in receiver.spans()]
        services = {service for service, _ in receiver.spans()}
        texts = receiver.texts()
    assert out["codes"][0] in (401, 403) and out["codes"][1] == 404
    assert out["otel_middleware"]
    assert services == {"sanctum-control-plane"}
    by_name = {s.name: s for s in spans}
    api = by_name["GET api/clients/$"]
    assert attributes(api)["http.route"] == "api/clients/$"
    assert attributes(api)["http.status_code"] == out["codes"][0]
    assert "GET" in by_name  # the unrouted path: its method only
    assert "run/sanctum_test.echo" in by_name
    assert attributes(by_name["run/sanctum_test.echo"])["celery.task_name"] == "sanctum_test.echo"
    assert texts_containing(marker, texts) == []


def test_without_an_endpoint_nothing_is_installed(tmp_path: Path):
    out = _run(tmp_path, new_marker())
    assert out["otel_middleware"] == []
    assert out["provider"] == "ProxyTracerProvider"
    assert out["threads"] == []
