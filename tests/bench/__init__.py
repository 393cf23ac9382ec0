"""Benchmarks: side-by-side measurements in one run, written to docs/benchmarks.md.

Not part of ``make test`` (no test fails on a wall-clock time); ``make bench`` runs them.
Each benchmark module has ``main()`` and writes its own section of the results file
with :func:`write_section`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.usage import UsageRecord

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str) -> None:
    """Replace the ``name`` section of docs/benchmarks.md (between its markers)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{start}\n_Measured {stamp} on {machine()}._\n\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    RESULTS.write_text(text)


def usage_record(n: int, client_id: str, ended: _dt.datetime) -> UsageRecord:
    """The ``n``-th record of a benchmark: a 30-second session of ``client_id``."""
    from shared.usage import UsageRecord, format_timestamp, new_record_id

    return UsageRecord(
        record_id=new_record_id(),
        session_id=f"sess_{n:032x}",
        client_id=client_id,
        node_id="node-1",
        model="smollm2-135m-instruct",
        model_version="q4_1",
        model_sha256="ab" * 32,
        started_at=format_timestamp(ended - _dt.timedelta(seconds=30)),
        ended_at=format_timestamp(ended),
        ended_by="teardown",
        request_count=3,
        prompt_tokens=420,
        completion_tokens=180,
    )
