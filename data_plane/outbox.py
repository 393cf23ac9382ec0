"""The usage outbox: node-signed usage records on disk until the control plane has them.

A record is written here, and made durable, before the teardown that produced it is
answered; the control plane reads it through the management listener and acknowledges
it once stored; the record then stays a while longer (the receipt retention) so the
client can fetch its copy again, and is dropped.

Files, in ``DATA_DIR/outbox`` (metadata only: usage records hold no content)::

    00000000000000000001.seg   segments: append-only, one record per line, named by
    00000000000000000512.seg   the cursor of their first record
    00000000000000000001.placed  where the control plane logged the segment's acknowledged
                               records (append-only, one placement per line)
    acks.json                  what the control plane has acknowledged, and the newest
                               signed tree head it handed over (replaced atomically)

A line is ASCII: ``CURSOR <TAB> JWS <TAB> CRC32 <LF>``, the CRC (8 lowercase hex digits)
taken over ``CURSOR <TAB> JWS``. Cursors increase by one per record (a failed write may
leave a gap) and are never reused, across restarts too.

A placement line is ASCII: ``CURSOR <TAB> LOG_INDEX <TAB> LOGGED_AT <TAB> LEAF_HASH <TAB>
CRC32 <LF>``: the ledger index and time the control plane logged the record at, and the
leaf's hash, as its acknowledgement said. With the record they are the whole ledger leaf,
so a control plane restored from an older backup can collect the record again and append
it, byte for byte, at the same index (docs/operations.md, "Backups and restore"); the tree
head kept in ``acks.json`` tells it how far its ledger had grown. A later line for the
same cursor wins. Placements are written (and fsynced) before the acknowledgement state,
and are read like segments: a torn last line is cut off, a line failing its CRC skipped.

Crash consistency. A batch of records is written with one ``write`` and one ``fsync``
(of the file, and of the directory when the file was just created) before any of them
is acknowledged to a caller or listed to the control plane. A crash can therefore leave
at most an incomplete last line (no LF) in the segment being written, or a complete line
that fails its CRC; at start the first is cut off (the file truncated to its last LF and
fsynced) and the second skipped, so the next append never runs on from a torn line.
Each restart writes to a new segment. The acknowledgement state is replaced with
write-fsync-rename-fsync, so it is either the old or the new one. Nothing is ever
rewritten in place: compaction deletes whole segments whose records are all acknowledged
and past the retention, which can't lose or double a record whatever moment it stops at.

All file work runs on a worker thread (``asyncio.to_thread``) under one lock; appends
from concurrent session ends are grouped into one write and one fsync.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_plane.settings import OutboxSettings
from shared.keys import fsync_dir
from shared.usage import UsageRecordError, parse_timestamp, peek_usage_record

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
PLACED_SUFFIX = ".placed"
STATE_FILE = "acks.json"
_SEGMENT_NAME = re.compile(r"(\d{20})\.seg")
_CRC = re.compile(rb"[0-9a-f]{8}")


class OutboxError(Exception):
    """A record could not be stored (the disk refused the write or the fsync)."""


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """What the outbox indexes about a record: ids and its end time. Never content."""

    record_id: str
    session_id: str
    client_id: str
    ended_at: float  # POSIX seconds


@dataclass(eq=False, slots=True)
class Segment:
    first: int
    path: Path
    size: int = 0
    cursors: list[int] = field(default_factory=list)  # valid records, increasing
    newest_end: float = 0.0
    opened_at: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredRecord:
    cursor: int
    meta: RecordMeta
    segment: Segment
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """A record read back from disk, checked against its CRC."""

    cursor: int
    meta: RecordMeta
    jws: str


@dataclass(frozen=True, slots=True)
class Placed:
    """Where the control plane logged a record: ledger index, ``logged_at``, leaf hash."""

    log_index: int
    logged_at: str
    leaf_hash: str


@dataclass(frozen=True, slots=True)
class PlacedRecord:
    """An acknowledged record still on disk, with its placement."""

    cursor: int
    meta: RecordMeta
    jws: str
    placed: Placed


@dataclass(frozen=True, slots=True)
class AckResult:
    acked_through: int
    pending: int
    unknown_ids: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    records: int
    pending: int
    torn_tails: int
    bad_lines: int
    duplicates: int


def encode_line(cursor: int, jws: str) -> bytes:
    body = f"{cursor}\t{jws}".encode("ascii")
    return body + b"\t" + f"{zlib.crc32(body):08x}".encode("ascii") + b"\n"


def parse_line(line: bytes) -> tuple[int, str, RecordMeta] | None:
    """A complete line (without its LF) as (cursor, jws, meta), or None if it is not one.

    Checks the CRC, the cursor, and that the JWS carries a usage record's ids and end
    time (the signature is the control plane's to check; a changed byte fails the CRC).
    """
    body, tab, crc = line.rpartition(b"\t")
    if not tab or not _CRC.fullmatch(crc) or int(crc, 16) != zlib.crc32(body):
        return None
    cursor_text, tab, jws_bytes = body.partition(b"\t")
    if not tab or not cursor_text.isdigit() or cursor_text.startswith(b"0"):
        return None
    try:
        jws = jws_bytes.decode("ascii")
        document = peek_usage_record(jws)
        record_id, session_id, client_id, ended = (
            document.get(k) for k in ("record_id", "session_id", "client_id", "ended_at")
        )
        if not (
            isinstance(record_id, str)
            and isinstance(session_id, str)
            and isinstance(client_id, str)
            and isinstance(ended, str)
        ):
            return None
        meta = RecordMeta(record_id, session_id, client_id, parse_timestamp(ended).timestamp())
    except (UnicodeDecodeError, UsageRecordError, ValueError):
        return None
    return int(cursor_text), jws, meta


def segment_name(first: int) -> str:
    return f"{first:020d}{SEGMENT_SUFFIX}"


def placed_path(segment: Path) -> Path:
    return segment.with_suffix(PLACED_SUFFIX)


def encode_placement(cursor: int, placed: Placed) -> bytes:
    body = f"{cursor}\t{placed.log_index}\t{placed.logged_at}\t{placed.leaf_hash}".encode("ascii")
    return body + b"\t" + f"{zlib.crc32(body):08x}".encode("ascii") + b"\n"


_PLACED_TEXT = re.compile(rb"[0-9A-Za-z:.+/=_-]+")


def parse_placement(line: bytes) -> tuple[int, Placed] | None:
    """A complete placement line (without its LF) as (cursor, placement), or None."""
    body, tab, crc = line.rpartition(b"\t")
    if not tab or not _CRC.fullmatch(crc) or int(crc, 16) != zlib.crc32(body):
        return None
    fields = body.split(b"\t")
    if len(fields) != 4 or not all(_PLACED_TEXT.fullmatch(f) for f in fields):
        return None
    cursor, index, logged_at, leaf = fields
    if not cursor.isdigit() or not index.isdigit():
        return None
    return int(cursor), Placed(int(index), logged_at.decode("ascii"), leaf.decode("ascii"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class UsageOutbox:
    """The node's outbox of signed usage records, with its receipt index.

    ``open()`` before use and ``close()`` after; every other coroutine runs its file work
    on a worker thread and returns once it is done (an append: once it is durable).
    """

    def __init__(
        self,
        directory: Path,
        settings: OutboxSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[int, StoredRecord] = {}  # every record still on disk
        self._sessions: dict[str, int] = {}  # session id -> cursor of its record
        self._pending: list[int] = []  # unacknowledged cursors, increasing
        self._pending_ids: dict[str, int] = {}  # record id -> cursor, pending only
        self._ids: dict[str, int] = {}  # record id -> cursor, every record on disk
        self._placed: dict[int, Placed] = {}  # cursor -> where the control plane logged it
        self._tree_head: str | None = None  # the newest tree head an ack handed over
        self._tree_size = -1
        self._acked_above: set[int] = set()  # acknowledged by id past acked_through
        self._acked_through = 0
        self._last = 0  # highest cursor written and made durable
        self._next = 1
        self._segments: list[Segment] = []
        self._active: Segment | None = None
        self._fd: int | None = None
        self._queue: list[tuple[str, RecordMeta, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._opened = False

    # --- life --------------------------------------------------------------------------

    async def open(self) -> LoadReport:
        report = await asyncio.to_thread(self._load)
        self._opened = True
        logger.info(
            "outbox opened records=%d pending=%d next_cursor=%d torn_tails=%d bad_lines=%d "
            "duplicates=%d",
            report.records,
            report.pending,
            self._next,
            report.torn_tails,
            report.bad_lines,
            report.duplicates,
        )
        return report

    async def close(self) -> None:
        """Finish the writes under way, then close the active segment."""
        while self._flusher is not None and not self._flusher.done():
            await self._flusher
        with self._lock:
            self._seal_active()
        self._opened = False

    # --- appending ---------------------------------------------------------------------

    async def append(self, jws: str, meta: RecordMeta) -> int:
        """Store one record durably; returns its cursor once it is fsynced.

        Concurrent appends share one write and one fsync. A caller that is cancelled
        meanwhile does not stop the write (the record is then stored but not returned).
        """
        if not self._opened:
            raise OutboxError("the outbox is not open")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((jws, meta, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="outbox-flush")
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                cursors = await asyncio.to_thread(
                    self._write_batch, [(jws, meta) for jws, meta, _ in batch]
                )
            except Exception as exc:
                if not isinstance(exc, OutboxError):
                    logger.exception("outbox write failed unexpectedly")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(OutboxError("usage records could not be stored"))
                        # a caller that gave up (cancelled) must not leave it unretrieved
                        future.add_done_callback(lambda f: f.exception())
                continue
            for (_, _, future), cursor in zip(batch, cursors, strict=True):
                if not future.done():
                    future.set_result(cursor)

    def _write_batch(self, items: list[tuple[str, RecordMeta]]) -> list[int]:
        with self._lock:
            now = self._clock()
            try:
                segment, fd = self._segment_for_write(now)
            except OSError as exc:
                logger.error("outbox segment could not be opened errno=%s", exc.errno)
                raise OutboxError("usage records could not be stored") from None
            base = segment.size
            lines: list[bytes] = []
            made: list[StoredRecord] = []
            offset = base
            for jws, meta in items:
                cursor = self._next
                self._next += 1  # never reused, even if this write fails
                line = encode_line(cursor, jws)
                made.append(StoredRecord(cursor, meta, segment, offset, len(line)))
                lines.append(line)
                offset += len(line)
            try:
                _write_all(fd, b"".join(lines))
                os.fsync(fd)
            except OSError as exc:
                logger.error(
                    "outbox write failed errno=%s segment=%s records=%d",
                    exc.errno,
                    segment.path.name,
                    len(items),
                )
                # Take the partial write back if we can, and write on in a new segment
                # either way, so a later record never continues a torn line.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, base)
                self._seal_active()
                raise OutboxError("usage records could not be stored") from None
            segment.size = offset
            for record in made:
                self._publish(record, pending=True)
            return [r.cursor for r in made]

    def _segment_for_write(self, now: float) -> tuple[Segment, int]:
        s = self._settings
        active = self._active
        if active is not None and (
            active.size >= s.segment_max_bytes
            or now - active.opened_at >= s.segment_max_age_seconds
        ):
            self._seal_active()
        if self._active is None or self._fd is None:
            path = self.directory / segment_name(self._next)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fsync_dir(self.directory)  # the new name is durable before any record in it
                size = os.fstat(fd).st_size
            except OSError:
                os.close(fd)
                raise
            segment = Segment(first=self._next, path=path, size=size, opened_at=now)
            self._segments.append(segment)
            self._active, self._fd = segment, fd
        return self._active, self._fd

    def _seal_active(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._active, self._fd = None, None

    def _publish(self, record: StoredRecord, *, pending: bool) -> None:
        cursor, meta = record.cursor, record.meta
        self._records[cursor] = record
        record.segment.cursors.append(cursor)
        record.segment.newest_end = max(record.segment.newest_end, meta.ended_at)
        self._ids[meta.record_id] = cursor
        if meta.session_id in self._sessions:
            logger.warning("outbox holds two records for session=%s", meta.session_id)
        else:
            self._sessions[meta.session_id] = cursor
        if pending:
            self._pending.append(cursor)
            self._pending_ids[meta.record_id] = cursor
        self._last = max(self._last, cursor)

    # --- loading -----------------------------------------------------------------------

    def _load(self) -> LoadReport:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stray in self.directory.glob("*.tmp"):
            stray.unlink(missing_ok=True)
        high_water = self._load_state()
        torn = bad = duplicates = 0
        seen_ids: set[str] = set()
        named = sorted(
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.fullmatch(p.name))
        )
        removed = False
        for first, path in named:
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                # An incomplete last line: the write it belonged to was never
                # acknowledged. Cut it off so nothing is appended after it.
                torn += 1
                with open(path, "r+b") as fh:
                    fh.truncate(end)
                    fh.flush()
                    os.fsync(fh.fileno())
                logger.warning(
                    "outbox segment had a torn last line, cut off segment=%s bytes=%d",
                    path.name,
                    len(data) - end,
                )
            if end == 0:
                path.unlink()
                placed_path(path).unlink(missing_ok=True)
                removed = True
                continue
            segment = Segment(first=first, path=path, size=end)
            offset = 0
            for line in data[:end].split(b"\n")[:-1]:
                length = len(line) + 1
                parsed = parse_line(line)
                if parsed is None:
                    bad += 1
                    logger.warning(
                        "outbox line skipped: not a valid record segment=%s offset=%d",
                        path.name,
                        offset,
                    )
                else:
                    cursor, _, meta = parsed
                    if cursor in self._records or meta.record_id in seen_ids:
                        duplicates += 1
                    else:
                        seen_ids.add(meta.record_id)
                        acked = cursor <= self._acked_through or cursor in self._acked_above
                        record = StoredRecord(cursor, meta, segment, offset, length)
                        self._publish(record, pending=not acked)
                offset += length
            segment.opened_at = segment.newest_end
            self._segments.append(segment)
            self._load_placements(segment)
        if removed:
            fsync_dir(self.directory)
        self._pending.sort()
        self._acked_above &= set(self._records)
        self._next = max(high_water, self._last, self._acked_through) + 1
        return LoadReport(len(self._records), len(self._pending), torn, bad, duplicates)

    def _load_placements(self, segment: Segment) -> None:
        path = placed_path(segment.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(path, "r+b") as fh:  # a torn last line: cut off, as for segments
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        known = set(segment.cursors)
        for line in data[:end].split(b"\n")[:-1]:
            parsed = parse_placement(line)
            if parsed is None or parsed[0] not in known:
                logger.warning("outbox placement line skipped file=%s", path.name)
                continue
            self._placed[parsed[0]] = parsed[1]

    def _load_state(self) -> int:
        path = self.directory / STATE_FILE
        if not path.exists():
            return 0
        try:
            state = json.loads(path.read_text("ascii"))
            acked_through = int(state["acked_through"])
            acked = {int(c) for c in state["acked"]}
            high_water = int(state["high_water"])
        except (OSError, ValueError, KeyError, TypeError):
            # Written by rename, so never torn; if it is unreadable anyway, forget the
            # acknowledgements: records are then offered again, never lost.
            logger.error("outbox acknowledgement state unreadable; treating all as pending")
            return 0
        self._acked_through, self._acked_above = acked_through, acked
        head = state.get("tree_head")
        if isinstance(head, str):
            self._keep_tree_head(head)
        return high_water

    def _save_state(self) -> None:
        path = self.directory / STATE_FILE
        tmp = path.with_name(STATE_FILE + ".tmp")
        state = {
            "acked_through": self._acked_through,
            "acked": sorted(self._acked_above),
            "high_water": max(self._last, self._acked_through),
            "tree_head": self._tree_head,
        }
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, json.dumps(state, separators=(",", ":")).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(self.directory)

    # --- reading -----------------------------------------------------------------------

    def _read(self, records: list[StoredRecord]) -> list[OutboxRecord]:
        out: list[OutboxRecord] = []
        handles: dict[Path, int] = {}
        try:
            for record in records:
                path = record.segment.path
                if path not in handles:
                    handles[path] = os.open(path, os.O_RDONLY)
                line = os.pread(handles[path], record.length, record.offset)
                parsed = parse_line(line[:-1]) if line.endswith(b"\n") else None
                if parsed is None or parsed[0] != record.cursor:
                    logger.error(
                        "outbox record changed on disk, not served cursor=%d", record.cursor
                    )
                    continue
                out.append(OutboxRecord(record.cursor, record.meta, parsed[1]))
        finally:
            for fd in handles.values():
                os.close(fd)
        return out

    async def pending_after(self, after: int, limit: int) -> tuple[list[OutboxRecord], bool]:
        """Up to ``limit`` unacknowledged records with a cursor above ``after``, in order;
        and whether more are waiting."""
        return await asyncio.to_thread(self._pending_after, after, limit)

    def _pending_after(self, after: int, limit: int) -> tuple[list[OutboxRecord], bool]:
        with self._lock:
            start = bisect.bisect_right(self._pending, after)
            cursors = self._pending[start : start + limit]
            more = len(self._pending) > start + limit
            return self._read([self._records[c] for c in cursors]), more

    async def receipt(self, session_id: str) -> OutboxRecord | None:
        """The record of a session, while the node still holds it."""
        return await asyncio.to_thread(self._receipt, session_id)

    def _receipt(self, session_id: str) -> OutboxRecord | None:
        with self._lock:
            cursor = self._sessions.get(session_id)
            record = self._records.get(cursor) if cursor is not None else None
            if record is None:
                return None
            found = self._read([record])
            return found[0] if found else None

    # --- acknowledging and compacting --------------------------------------------------

    async def ack(
        self,
        cursor: int | None,
        record_ids: list[str],
        placements: dict[str, Placed] | None = None,
        tree_head: str | None = None,
    ) -> AckResult:
        """Mark records as stored by the control plane; durable before it returns.

        ``placements`` (record id -> where it was logged) are kept with the records, and
        ``tree_head`` (a signed checkpoint note) replaces the one kept if it is larger.
        """
        return await asyncio.to_thread(self._ack, cursor, record_ids, placements, tree_head)

    def _ack(
        self,
        cursor: int | None,
        record_ids: list[str],
        placements: dict[str, Placed] | None = None,
        tree_head: str | None = None,
    ) -> AckResult:
        with self._lock:
            self._write_placements(placements or {})
            head_changed = tree_head is not None and self._keep_tree_head(tree_head)
            done: set[int] = set()
            if cursor is not None:
                # A cursor past the last record is not one this node gave out: it
                # acknowledges what exists, never records written later.
                cut = bisect.bisect_right(self._pending, min(cursor, self._last))
                done.update(self._pending[:cut])
            unknown = 0
            for record_id in record_ids:
                found = self._pending_ids.get(record_id)
                if found is None:
                    unknown += 1
                else:
                    done.add(found)
            if done:
                self._pending = [c for c in self._pending if c not in done]
                for c in done:
                    self._pending_ids.pop(self._records[c].meta.record_id, None)
                self._acked_above |= done
            new_through = self._pending[0] - 1 if self._pending else self._last
            if done or head_changed or new_through != self._acked_through:
                self._acked_through = max(self._acked_through, new_through)
                self._acked_above = {c for c in self._acked_above if c > self._acked_through}
                self._save_state()
            return AckResult(self._acked_through, len(self._pending), unknown)

    def _write_placements(self, placements: dict[str, Placed]) -> None:
        """Append the new placements to their segments' ``.placed`` files, fsynced."""
        lines: dict[Path, list[bytes]] = {}
        fresh: dict[int, Placed] = {}
        for record_id, placed in placements.items():
            cursor = self._ids.get(record_id)
            if cursor is None or self._placed.get(cursor) == placed:
                continue  # not held (compacted, or never ours), or known already
            path = placed_path(self._records[cursor].segment.path)
            lines.setdefault(path, []).append(encode_placement(cursor, placed))
            fresh[cursor] = placed
        for path, chunk in lines.items():
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(fd, b"".join(chunk))
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.directory)
        self._placed.update(fresh)

    def _keep_tree_head(self, note: str) -> bool:
        """Keep ``note`` if it is a checkpoint larger than the one held (not verified here:
        the control plane checks the signature of what it reads back)."""
        lines = note.split("\n")
        if len(lines) < 3 or not lines[1].isdigit() or len(note) > 8192:
            return False
        size = int(lines[1])
        if size <= self._tree_size:
            return False
        self._tree_head, self._tree_size = note, size
        return True

    async def placed_from(self, from_index: int, limit: int) -> tuple[list[PlacedRecord], bool]:
        """Up to ``limit`` acknowledged records still held whose ledger index is at least
        ``from_index``, in index order; and whether there are more."""
        return await asyncio.to_thread(self._placed_from, from_index, limit)

    def _placed_from(self, from_index: int, limit: int) -> tuple[list[PlacedRecord], bool]:
        with self._lock:
            wanted = sorted(
                (p.log_index, c)
                for c, p in self._placed.items()
                if p.log_index >= from_index and c in self._records
            )
            page = wanted[:limit]
            read = {r.cursor: r for r in self._read([self._records[c] for _, c in page])}
            out = [
                PlacedRecord(c, read[c].meta, read[c].jws, self._placed[c])
                for _, c in page
                if c in read
            ]
            return out, len(wanted) > limit

    @property
    def tree_head(self) -> str | None:
        """The newest signed tree head an acknowledgement handed over (a checkpoint note)."""
        return self._tree_head

    async def compact(self) -> int:
        """Delete segments whose records are all acknowledged and past the retention."""
        return await asyncio.to_thread(self._compact)

    def _compact(self) -> int:
        with self._lock:
            cutoff = self._clock() - self._settings.receipt_retention_seconds
            deleted = 0
            for segment in list(self._segments):
                if not segment.cursors:
                    if segment is not self._active and segment.size == 0:
                        segment.path.unlink(missing_ok=True)
                        self._segments.remove(segment)
                        deleted += 1
                    continue  # a segment of unreadable lines stays for the operator
                i = bisect.bisect_left(self._pending, segment.first)
                if i < len(self._pending) and self._pending[i] <= segment.cursors[-1]:
                    continue  # holds a record the control plane has not stored
                if segment.newest_end > cutoff:
                    continue
                if segment is self._active:
                    self._seal_active()
                segment.path.unlink(missing_ok=True)
                placed_path(segment.path).unlink(missing_ok=True)
                self._segments.remove(segment)
                for cursor in segment.cursors:
                    record = self._records.pop(cursor)
                    if self._sessions.get(record.meta.session_id) == cursor:
                        del self._sessions[record.meta.session_id]
                    if self._ids.get(record.meta.record_id) == cursor:
                        del self._ids[record.meta.record_id]
                    self._placed.pop(cursor, None)
                    self._acked_above.discard(cursor)
                deleted += 1
            if deleted:
                fsync_dir(self.directory)
                logger.info("outbox compacted segments=%d records=%d", deleted, len(self._records))
            return deleted

    # --- numbers for health and tests ---------------------------------------------------

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def acked_through(self) -> int:
        return self._acked_through

    @property
    def last_cursor(self) -> int:
        return self._last
