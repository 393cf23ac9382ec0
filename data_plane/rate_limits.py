"""Each client's rate limits and token quotas, as this node enforces them.

The limits come from the client's entry in the signed config (``ClientLimits``). With
several nodes, the control plane gives each node a share of the client's limits (they
add up to the client's own; docs/security.md), and each node enforces its share alone:
no node asks another, or anything else, before it answers.

- **Requests per minute**: a token bucket that holds the limit and refills at the limit
  per minute. Each client API call that starts work (a chat, a completion, a session,
  a session document, an embeddings call) takes one.
- **Tokens per minute**: a bucket the same way. A turn takes its whole cost (prompt
  tokens, known before it queues, plus its ``max_tokens``) before it queues, and what
  it did not use comes back when it ends. A cost larger than the bucket waits until the
  bucket is full and then empties it.
- **Tokens per day and per month** (UTC): a turn is admitted only if its whole cost fits
  in what is left of both; when it ends, what it used (prompt plus completion tokens,
  the counts of its usage record) is kept, in the period it ended in. The counts live in
  ``state/usage-counters.json`` (client ids and numbers, nothing else), written every
  few seconds and at shutdown, so a restart keeps them; a crash forgets the last few
  seconds of counting.

A refusal is :class:`RateLimited` (HTTP 429) with the seconds until a retry can succeed,
and the ``x-ratelimit-*`` headers that OpenAI sends and its SDK reads; a spent quota also
says ``x-should-retry: false`` (the SDK's own retry would not help before the period
turns). Times come from a clock the tests can replace.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from shared.config import ClientLimits

logger = logging.getLogger(__name__)

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")


def _quota(limits: ClientLimits, kind: Period) -> int | None:
    return limits.tokens_per_day if kind == "day" else limits.tokens_per_month


class RateLimited(Exception):
    """A client is over one of its limits. The message names the limit, never content."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retry_after: float | None,
        headers: dict[str, str],
        retry: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after
        self.headers = dict(headers)
        if retry_after is not None:
            self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
            self.headers["retry-after-ms"] = str(max(1, math.ceil(retry_after * 1000)))
        self.headers["x-should-retry"] = "true" if retry else "false"


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


@dataclass
class _Bucket:
    """A token bucket: ``capacity`` refilled over a minute. Its level may go below zero
    (a turn that used more than it reserved): later callers wait for that too."""

    capacity: int
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float, capacity: int) -> None:
        if capacity != self.capacity:  # the limit changed with a new config
            self.level = min(self.level, capacity) + max(0, capacity - self.capacity)
            self.capacity = capacity
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, n: float) -> float:
        """Seconds until ``n`` can be taken (``n`` at most the capacity)."""
        need = min(n, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate

    def full_in(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass
class _PeriodCount:
    period: str  # "2026-12-06" or "2026-12"
    used: int = 0
    reserved: int = 0


@dataclass
class _ClientState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    counts: dict[Period, _PeriodCount] = field(default_factory=dict)


@dataclass(frozen=True)
class Reservation:
    """What a turn took before it queued; handed back to :meth:`RateLimiter.settle`."""

    client_id: str
    tokens: int  # from the tokens-per-minute bucket
    quota: int  # reserved against the day's and the month's quota
    periods: tuple[tuple[Period, str], ...]


def _period(kind: Period, at: datetime) -> str:
    return at.strftime("%Y-%m-%d" if kind == "day" else "%Y-%m")


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _period_end(kind: Period, at: datetime) -> datetime:
    if kind == "day":
        return datetime(at.year, at.month, at.day, tzinfo=UTC) + timedelta(days=1)
    return datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)


class RateLimiter:
    """Every client's buckets and quota counts on this node (see the module docstring)."""

    def __init__(
        self,
        counts_path: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = counts_path
        self._clock = clock
        self._clients: dict[str, _ClientState] = {}
        self._lock = threading.Lock()  # the event loop and the flush thread
        self._writing = threading.Lock()  # one flush at a time (the task's, shutdown's)
        self._dirty = False
        self._load()

    # --- requests ----------------------------------------------------------------------

    def take_request(self, client_id: str, limits: ClientLimits) -> None:
        """One request of the client's per-minute allowance, or RateLimited."""
        limit = limits.requests_per_minute
        if limit is None:
            return
        now = self._clock()
        with self._lock:
            state = self._clients.setdefault(client_id, _ClientState())
            bucket = state.requests = self._bucket(state.requests, limit, now)
            wait = bucket.wait(1)
            if wait > 0:
                raise RateLimited(
                    f"rate limit: {limit} requests per minute for this client on this node; "
                    f"retry in {duration(wait)}",
                    code="rate_limit_exceeded",
                    retry_after=wait,
                    headers=self._headers(state, limits, now),
                )
            bucket.level -= 1

    # --- tokens ------------------------------------------------------------------------

    def reserve(self, client_id: str, limits: ClientLimits, cost: int) -> Reservation:
        """Take a turn's whole cost (prompt tokens plus its max_tokens) from the
        tokens-per-minute bucket and the quotas, or raise RateLimited."""
        now = self._clock()
        at = datetime.fromtimestamp(now, UTC)
        with self._lock:
            state = self._clients.setdefault(client_id, _ClientState())
            periods: list[tuple[Period, str]] = []
            for kind in PERIODS:  # counted with or without a quota, for GET /v1/usage
                quota = _quota(limits, kind)
                count = self._count(state, kind, at)
                periods.append((kind, count.period))
                if quota is None:
                    continue
                left = quota - count.used - count.reserved
                if cost > left:
                    ends = _period_end(kind, at)
                    raise RateLimited(
                        f"quota: this turn needs {cost} tokens (its prompt and max_tokens) "
                        f"and {max(0, left)} are left of this client's {quota} tokens per "
                        f"{kind} on this node; lower max_tokens or wait until "
                        f"{_iso(ends)}",
                        code="insufficient_quota",
                        retry_after=(ends - at).total_seconds(),
                        headers=self._headers(state, limits, now),
                        retry=False,
                    )
            taken = 0
            limit = limits.tokens_per_minute
            if limit is not None:
                bucket = state.tokens = self._bucket(state.tokens, limit, now)
                wait = bucket.wait(cost)
                if wait > 0:
                    raise RateLimited(
                        f"rate limit: {limit} tokens per minute for this client on this "
                        f"node; this turn needs {cost} (its prompt and max_tokens); retry in "
                        f"{duration(wait)}",
                        code="rate_limit_exceeded",
                        retry_after=wait,
                        headers=self._headers(state, limits, now),
                    )
                taken = min(cost, bucket.capacity)
                bucket.level -= taken
            for kind, _ in periods:
                state.counts[kind].reserved += cost
            return Reservation(client_id, taken, cost, tuple(periods))

    def settle(self, reservation: Reservation, used: int) -> None:
        """A turn ended having used ``used`` tokens: give back what it reserved and did
        not use, and count what it did."""
        now = self._clock()
        at = datetime.fromtimestamp(now, UTC)
        with self._lock:
            state = self._clients.setdefault(reservation.client_id, _ClientState())
            if reservation.tokens and state.tokens is not None:
                state.tokens.refill(now, state.tokens.capacity)
                state.tokens.level += reservation.tokens - used
            for kind, period in reservation.periods:
                count = self._count(state, kind, at)
                if count.period == period:
                    count.reserved = max(0, count.reserved - reservation.quota)
                # A turn that ran across midnight counts in the period it ended in, as
                # its usage record does (the control plane sums receipts by end time).
                count.used += used
                self._dirty = True

    # --- what a client sees ------------------------------------------------------------

    def headers(self, client_id: str, limits: ClientLimits) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for a response to this client now."""
        now = self._clock()
        with self._lock:
            state = self._clients.setdefault(client_id, _ClientState())
            return self._headers(state, limits, now)

    def usage(self, client_id: str, limits: ClientLimits) -> dict[str, Any]:
        """The client's limits on this node and what is left of each (``GET /v1/usage``)."""
        now = self._clock()
        at = datetime.fromtimestamp(now, UTC)
        out: dict[str, Any] = {}
        with self._lock:
            state = self._clients.setdefault(client_id, _ClientState())
            for name, limit, bucket in self._minute_buckets(state, limits, now):
                out[f"{name}_per_minute"] = (
                    None
                    if bucket is None
                    else {
                        "limit": limit,
                        "remaining": max(0, math.floor(bucket.level)),
                        "resets_in_seconds": round(bucket.full_in(), 3),
                    }
                )
            for kind in PERIODS:
                quota = _quota(limits, kind)
                count = self._count(state, kind, at)
                out[f"tokens_per_{kind}"] = {
                    "period": count.period,
                    "limit": quota,
                    "used": count.used,
                    "reserved": count.reserved,
                    "remaining": None
                    if quota is None
                    else max(0, quota - count.used - count.reserved),
                    "resets_at": _iso(_period_end(kind, at)),
                }
        return out

    # --- persistence ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write the quota counts if they changed (atomically; ids and numbers only).
        One writer at a time; a write that fails leaves them to be written again."""
        with self._writing:
            with self._lock:
                if not self._dirty:
                    return
                document = {
                    client: {
                        kind: {"period": c.period, "used": c.used}
                        for kind, c in state.counts.items()
                    }
                    for client, state in self._clients.items()
                    if state.counts
                }
                self._dirty = False
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._path.with_name(self._path.name + ".tmp")
                with open(tmp, "w", encoding="ascii") as fh:
                    json.dump(document, fh, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self._path)
            except BaseException:
                with self._lock:
                    self._dirty = True
                raise

    def _load(self) -> None:
        if not self._path.exists():
            return
        try:
            document = json.loads(self._path.read_text("ascii"))
            for client, counts in document.items():
                state = self._clients.setdefault(str(client), _ClientState())
                for kind in PERIODS:
                    if kind in counts:
                        c = counts[kind]
                        state.counts[kind] = _PeriodCount(str(c["period"]), int(c["used"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            # Counts only: starting them over is the worst that can happen.
            logger.error("usage counters unreadable; counting from zero")
            self._clients.clear()

    # --- pieces ------------------------------------------------------------------------

    @staticmethod
    def _bucket(bucket: _Bucket | None, limit: int, now: float) -> _Bucket:
        if bucket is None:
            return _Bucket(capacity=limit, level=float(limit), updated=now)
        bucket.refill(now, limit)
        return bucket

    @staticmethod
    def _count(state: _ClientState, kind: Period, at: datetime) -> _PeriodCount:
        period = _period(kind, at)
        count = state.counts.get(kind)
        if count is None or count.period != period:
            count = state.counts[kind] = _PeriodCount(period)
        return count

    def _minute_buckets(
        self, state: _ClientState, limits: ClientLimits, now: float
    ) -> list[tuple[str, int | None, _Bucket | None]]:
        """("requests" or "tokens", its per-minute limit, its bucket refilled to ``now``;
        None without a limit)."""
        out: list[tuple[str, int | None, _Bucket | None]] = []
        for name, limit in (
            ("requests", limits.requests_per_minute),
            ("tokens", limits.tokens_per_minute),
        ):
            bucket = None
            if limit is not None:
                bucket = self._bucket(getattr(state, name), limit, now)
                setattr(state, name, bucket)
            out.append((name, limit, bucket))
        return out

    def _headers(self, state: _ClientState, limits: ClientLimits, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, limit, bucket in self._minute_buckets(state, limits, now):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{name}"] = str(limit)
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
            out[f"x-ratelimit-reset-{name}"] = duration(bucket.full_in())
        return out
