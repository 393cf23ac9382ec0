"""Usage outbox: durable records per second, one session end at a time vs. many at once.

Every record is signed (Ed25519) and fsynced before its append returns. Ending sessions
one after another pays one fsync each; concurrent ends share a write and an fsync (group
commit). Both run in the same process on the same disk; the ratio is what to read.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from data_plane.outbox import RecordMeta, UsageOutbox
from data_plane.settings import OutboxSettings
from shared.usage import sign_usage_record
from tests.bench import usage_record, write_section

RECORDS = 1500
CONCURRENCY = (1, 8, 64)
KEY = Ed25519PrivateKey.generate()


def signed(n: int) -> tuple[str, RecordMeta]:
    ended = datetime.now(UTC)
    record = usage_record(n, "bench", ended)
    meta = RecordMeta(record.record_id, record.session_id, "bench", ended.timestamp())
    return sign_usage_record(record, KEY), meta


async def run(directory: Path, concurrency: int) -> float:
    box = UsageOutbox(directory, OutboxSettings())
    await box.open()
    queue = list(range(RECORDS))

    async def worker() -> None:
        while queue:
            n = queue.pop()
            token, meta = signed(n)
            await box.append(token, meta)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await box.close()
    return RECORDS / elapsed


async def open_time(directory: Path) -> float:
    started = time.perf_counter()
    box = UsageOutbox(directory, OutboxSettings())
    await box.open()
    elapsed = time.perf_counter() - started
    await box.close()
    return elapsed


def main() -> None:
    # On the repository's disk, not a tmpfs: fsync must cost what it costs.
    base = Path(__file__).resolve().parents[2] / "var"
    base.mkdir(exist_ok=True)
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-outbox-") as tmp:
        for concurrency in CONCURRENCY:
            rates[concurrency] = asyncio.run(run(Path(tmp) / f"c{concurrency}", concurrency))
            print(f"concurrency {concurrency}: {rates[concurrency]:.0f} records/s", flush=True)
        reopen = asyncio.run(open_time(Path(tmp) / "c1"))
    base_rate = rates[1]
    rows = "\n".join(
        f"| {c} | {rates[c]:,.0f} | {rates[c] / base_rate:.1f}x |" for c in CONCURRENCY
    )
    write_section(
        "outbox",
        f"""## Usage outbox: durable records per second

{RECORDS} usage records, each signed and fsynced before its append returns
(`tests/bench/outbox.py`). Concurrent session ends share one write and one fsync.

| concurrent session ends | records/s | vs one at a time |
|---|---|---|
{rows}

Reopening an outbox of {RECORDS} records (scan, CRC check, index): {reopen * 1000:.0f} ms.
""",
    )
