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
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.usage import UsageRecord

# SANCTUM_BENCH_RESULTS writes elsewhere: a run on other hardware (scripts/gpu-check.sh)
# does not replace the numbers the docs quote.
RESULTS = Path(
    os.environ.get("SANCTUM_BENCH_RESULTS")
    or Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
)


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


_TICKS = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """CPU time the whole machine spent busy (stolen by the host included), in ticks."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal


def _tree_ticks(roots: set[int]) -> int:
    """CPU time of ``roots`` and every process below them (threads included), in ticks."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ... utime stime: comm may hold spaces, so split after ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = int(fields[11]) + int(fields[12])
    ours = set(roots)
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= below
        grew = bool(below)
    return sum(times.get(pid, 0) for pid in ours)


class OtherLoad:
    """How much of the machine other processes took while a benchmark ran: the machine's
    busy time less this process's tree and ``roots`` (daemons such as nginx, which leave
    the tree), as a share of every core's time. On a shared machine a share above a few
    percent means the numbers were disturbed."""

    def __init__(self, roots: set[int] | None = None) -> None:
        self.roots = {os.getpid(), *(roots or set())}
        self._wall = time.monotonic()
        self._busy = _busy_ticks()
        self._ours = _tree_ticks(self.roots)

    def share(self) -> float:
        """Since this object was made."""
        wall = time.monotonic() - self._wall
        others = (_busy_ticks() - self._busy) - (_tree_ticks(self.roots) - self._ours)
        return max(0.0, others / _TICKS) / (wall * (os.cpu_count() or 1))


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
