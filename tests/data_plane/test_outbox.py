"""The usage outbox on a real filesystem: durability, torn lines, cursors, acks, compaction.

These drive the component directly (no model); the node-level tests in test_receipts.py
and test_outbox_crash.py go through the real process.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from data_plane import outbox as outbox_module
from data_plane.outbox import (
    STATE_FILE,
    OutboxError,
    RecordMeta,
    UsageOutbox,
    encode_line,
    parse_line,
)
from data_plane.settings import OutboxSettings
from shared.usage import UsageRecord, format_timestamp, new_record_id, sign_usage_record

KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def signed(n: int, client: str = "acme", ended: datetime | None = None) -> tuple[str, RecordMeta]:
    ended = ended or T0 + timedelta(seconds=n)
    record = UsageRecord(
        record_id=new_record_id(),
        session_id=f"sess_{n:04d}",
        client_id=client,
        node_id="node-1",
        model="m",
        model_version="v1",
        model_sha256="ab" * 32,
        started_at=format_timestamp(ended - timedelta(seconds=1)),
        ended_at=format_timestamp(ended),
        ended_by="teardown",
        request_count=1,
        prompt_tokens=10,
        completion_tokens=5,
    )
    meta = RecordMeta(record.record_id, record.session_id, client, ended.timestamp())
    return sign_usage_record(record, KEY), meta


class Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp() + 10_000

    def __call__(self) -> float:
        return self.now


def make(directory: Path, clock: Clock | None = None, **settings: float) -> UsageOutbox:
    return UsageOutbox(directory, OutboxSettings(**settings), clock=clock or Clock())


async def opened(directory: Path, clock: Clock | None = None, **settings: float) -> UsageOutbox:
    box = make(directory, clock, **settings)
    await box.open()
    return box


async def fill(box: UsageOutbox, numbers: range) -> list[tuple[int, str, RecordMeta]]:
    out = []
    for n in numbers:
        token, meta = signed(n)
        out.append((await box.append(token, meta), token, meta))
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_survive_a_restart_with_their_cursors(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        written = await fill(box, range(5))
        await box.close()
        again = await opened(tmp_path)
        records, more = await again.pending_after(0, 100)
        assert [(r.cursor, r.jws) for r in records] == [(c, t) for c, t, _ in written]
        assert not more
        found = await again.receipt("sess_0003")
        assert found is not None and found.jws == written[3][1]
        # a new record continues the cursors, in a new segment
        token, meta = signed(9)
        assert await again.append(token, meta) == 6
        await again.close()
        assert len(segments(tmp_path)) == 2

    asyncio.run(run())


def test_concurrent_appends_share_a_write_and_get_distinct_cursors(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        items = [signed(n) for n in range(50)]
        cursors = await asyncio.gather(*(box.append(t, m) for t, m in items))
        assert sorted(cursors) == list(range(1, 51))
        records, _ = await box.pending_after(0, 100)
        by_cursor = {r.cursor: r.jws for r in records}
        assert [by_cursor[c] for c in cursors] == [t for t, _ in items]
        await box.close()

    asyncio.run(run())


def test_paging_after_a_cursor(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        await fill(box, range(7))
        first, more = await box.pending_after(0, 3)
        assert [r.cursor for r in first] == [1, 2, 3] and more
        second, more = await box.pending_after(3, 3)
        assert [r.cursor for r in second] == [4, 5, 6] and more
        third, more = await box.pending_after(6, 3)
        assert [r.cursor for r in third] == [7] and not more
        assert (await box.pending_after(7, 3)) == ([], False)
        await box.close()

    asyncio.run(run())


def test_a_torn_last_line_is_cut_off_at_start(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        written = await fill(box, range(3))
        await box.close()
        segment = segments(tmp_path)[-1]
        good = segment.read_bytes()
        # a crash in the middle of writing a fourth record: half a line, no LF
        token, _ = signed(3)
        torn = encode_line(4, token)[:-40]
        segment.write_bytes(good + torn)
        again = await opened(tmp_path)
        assert segment.read_bytes() == good  # cut back to the last complete line
        records, _ = await again.pending_after(0, 100)
        assert [r.jws for r in records] == [t for _, t, _ in written]
        # the next record is whole and readable, after a restart too
        token, meta = signed(4)
        cursor = await again.append(token, meta)
        await again.close()
        third = await opened(tmp_path)
        records, _ = await third.pending_after(0, 100)
        assert records[-1].cursor == cursor and records[-1].jws == token
        await third.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    "garbage",
    [
        b"not a record at all\n",
        b"\x00" * 64 + b"\n",
        b"12\tnot-a-jws\t00000000\n",
    ],
)
def test_unreadable_lines_are_skipped_and_the_rest_served(tmp_path: Path, garbage: bytes) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        written = await fill(box, range(4))
        await box.close()
        segment = segments(tmp_path)[-1]
        lines = segment.read_bytes().splitlines(keepends=True)
        segment.write_bytes(b"".join([*lines[:2], garbage, *lines[2:], garbage]))
        again = await opened(tmp_path)
        records, _ = await again.pending_after(0, 100)
        assert [r.jws for r in records] == [t for _, t, _ in written]
        token, meta = signed(8)
        assert await again.append(token, meta) == 5
        await again.close()

    asyncio.run(run())


def test_a_changed_byte_fails_the_crc_and_is_not_served(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        await fill(box, range(3))
        await box.close()
        segment = segments(tmp_path)[-1]
        data = bytearray(segment.read_bytes())
        second_line = data.index(b"\n") + 1
        data[second_line + 40] ^= 0x01  # inside record 2's JWS
        segment.write_bytes(bytes(data))
        assert parse_line(bytes(data).splitlines()[1]) is None
        again = await opened(tmp_path)
        records, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in records] == [1, 3]
        await again.close()

    asyncio.run(run())


def test_a_duplicated_segment_does_not_double_records(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        await fill(box, range(3))
        await box.close()
        segment = segments(tmp_path)[-1]
        (tmp_path / "00000000000000000002.seg").write_bytes(segment.read_bytes())
        again = await opened(tmp_path)
        records, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in records] == [1, 2, 3]
        await again.close()

    asyncio.run(run())


def test_ack_by_cursor_and_by_id(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        written = await fill(box, range(6))
        result = await box.ack(2, [])
        assert (result.acked_through, result.pending) == (2, 4)
        # record 5 acknowledged by id: the watermark waits for 3 and 4
        result = await box.ack(None, [written[4][2].record_id, "no-such-id"])
        assert (result.acked_through, result.pending, result.unknown_ids) == (2, 3, 1)
        records, _ = await box.pending_after(0, 100)
        assert [r.cursor for r in records] == [3, 4, 6]
        result = await box.ack(4, [])
        assert (result.acked_through, result.pending) == (5, 1)
        await box.close()
        # acknowledgements are durable
        again = await opened(tmp_path)
        records, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in records] == [6]
        await again.close()

    asyncio.run(run())


def test_acking_twice_or_an_unknown_cursor_is_harmless(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        await fill(box, range(3))
        assert (await box.ack(2, [])).acked_through == 2
        assert (await box.ack(2, [])).acked_through == 2
        assert (await box.ack(1, [])).acked_through == 2
        # a cursor the node never gave out covers what exists, not what comes later
        assert (await box.ack(1_000, [])).acked_through == 3
        token, meta = signed(3)
        cursor = await box.append(token, meta)
        records, _ = await box.pending_after(0, 100)
        assert [r.cursor for r in records] == [cursor]
        assert cursor > 3
        await box.close()

    asyncio.run(run())


def test_compaction_drops_only_acknowledged_segments_past_retention(tmp_path: Path) -> None:
    async def run() -> None:
        clock = Clock()
        clock.now = T0.timestamp() + 60  # the records ended within the last minute
        box = await opened(tmp_path, clock, receipt_retention_seconds=3600, segment_max_bytes=4096)
        written = await fill(box, range(20))  # several segments of ~5 records
        assert len(segments(tmp_path)) >= 3
        await box.ack(12, [])
        assert await box.compact() == 0  # acknowledged, but receipts are still retained
        assert (await box.receipt("sess_0002")) is not None
        clock.now += 3600 * 24
        deleted = await box.compact()
        assert deleted >= 2
        # every unacknowledged record is still there, and the receipts lookup of a
        # dropped record answers None
        records, _ = await box.pending_after(0, 100)
        assert [r.cursor for r in records] == list(range(13, 21))
        assert (await box.receipt("sess_0000")) is None
        kept = {r.cursor for r in records}
        for cursor, token, meta in written:
            if cursor in kept:
                found = await box.receipt(meta.session_id)
                assert found is not None and found.jws == token
        await box.close()
        # nothing dropped comes back after a restart; cursors stay monotonic
        again = await opened(tmp_path, clock, receipt_retention_seconds=3600)
        records, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in records] == list(range(13, 21))
        await again.close()

    asyncio.run(run())


def test_cursors_keep_increasing_after_everything_is_compacted(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path, receipt_retention_seconds=0)
        await fill(box, range(4))
        await box.ack(4, [])
        assert await box.compact() == 1
        assert segments(tmp_path) == []
        await box.close()
        again = await opened(tmp_path, receipt_retention_seconds=0)
        token, meta = signed(4)
        assert await again.append(token, meta) == 5
        await again.close()

    asyncio.run(run())


def test_a_failed_write_is_not_acknowledged_and_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        await fill(box, range(2))
        real_fsync = os.fsync

        def failing(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(outbox_module.os, "fsync", failing)
        token, meta = signed(2)
        with pytest.raises(OutboxError):
            await box.append(token, meta)
        monkeypatch.setattr(outbox_module.os, "fsync", real_fsync)
        records, _ = await box.pending_after(0, 100)
        assert [r.cursor for r in records] == [1, 2]
        assert (await box.receipt(meta.session_id)) is None
        token, meta = signed(3)
        cursor = await box.append(token, meta)
        await box.close()
        again = await opened(tmp_path)
        records, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in records] == [1, 2, cursor]
        await again.close()

    asyncio.run(run())


def test_unreadable_ack_state_offers_records_again_rather_than_dropping_them(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        await fill(box, range(3))
        await box.ack(2, [])
        await box.close()
        (tmp_path / STATE_FILE).write_text("{not json")
        again = await opened(tmp_path)
        records, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in records] == [1, 2, 3]
        await again.close()

    asyncio.run(run())


def test_files_are_private(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path / "outbox")
        await fill(box, range(1))
        await box.ack(1, [])
        await box.close()

    asyncio.run(run())
    for path in [tmp_path / "outbox", *(tmp_path / "outbox").iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path


# --- placements: what a restored control plane collects again ------------------------------


def head(size: int) -> str:
    """A checkpoint-shaped note (the outbox keeps the largest; the control plane verifies)."""
    return f"example.org/log\n{size}\n{'A' * 43}=\n\n— example.org/log sig\n"


def placed(index: int) -> outbox_module.Placed:
    return outbox_module.Placed(index, f"2025-03-01T09:00:0{index % 10}.000Z", "B" * 43 + "=")


def test_placements_and_the_tree_head_survive_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        written = await fill(box, range(4))
        ids = {meta.record_id: cursor for cursor, _, meta in written}
        await box.ack(3, [], {m.record_id: placed(10 + c) for c, _, m in written[:3]}, head(13))
        await box.ack(None, [], {}, head(12))  # a smaller tree head does not replace it
        assert box.tree_head == head(13)
        await box.close()

        again = await opened(tmp_path)
        assert again.tree_head == head(13)
        found, more = await again.placed_from(12, 100)
        assert not more
        assert [(r.cursor, r.placed) for r in found] == [(2, placed(12)), (3, placed(13))]
        assert [r.jws for r in found] == [t for c, t, _ in written if c in (2, 3)]
        assert {r.meta.record_id for r in found} <= set(ids)
        # the unacknowledged record has no placement and is still offered as pending
        pending, _ = await again.pending_after(0, 100)
        assert [r.cursor for r in pending] == [4]
        await again.close()

    asyncio.run(run())


def test_a_torn_placement_line_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    async def run() -> None:
        box = await opened(tmp_path)
        written = await fill(box, range(2))
        await box.ack(2, [], {m.record_id: placed(c - 1) for c, _, m in written}, head(2))
        await box.close()
        (side,) = tmp_path.glob("*.placed")
        with open(side, "ab") as fh:
            fh.write(b"3\t7\t2025-03-01T09:00:00.000Z")  # a crash in the middle of a write
        again = await opened(tmp_path)
        found, _ = await again.placed_from(0, 100)
        assert [r.placed.log_index for r in found] == [0, 1]
        assert side.read_bytes().endswith(b"\n")
        await again.close()

    asyncio.run(run())


def test_placements_go_with_their_segment_when_it_is_compacted(tmp_path: Path) -> None:
    async def run() -> None:
        clock = Clock()
        box = await opened(tmp_path, clock, receipt_retention_seconds=3600)
        written = await fill(box, range(3))
        await box.ack(3, [], {m.record_id: placed(c - 1) for c, _, m in written}, head(3))
        assert len(list(tmp_path.glob("*.placed"))) == 1
        assert len((await box.placed_from(0, 100))[0]) == 3  # kept for the retention
        clock.now += 3600 * 24
        assert await box.compact() == 1
        assert list(tmp_path.glob("*.placed")) == []
        assert (await box.placed_from(0, 100))[0] == []
        assert box.tree_head == head(3)  # the tree head outlives the records
        await box.close()

    asyncio.run(run())
