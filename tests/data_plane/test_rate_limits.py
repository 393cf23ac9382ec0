"""The rate limiter's arithmetic, on a clock the test moves: buckets, reservations,
quotas that turn with the UTC day and month, and counts that survive a restart. What
clients see of it over HTTP is in test_limits_http.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from data_plane.rate_limits import RateLimited, RateLimiter, duration
from shared.config import ClientLimits


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 1, 31, 23, 59, 0, tzinfo=UTC))


def limiter(tmp_path: Path, clock: Clock) -> RateLimiter:
    return RateLimiter(tmp_path / "usage-counters.json", clock=clock)


def test_requests_per_minute_refill_at_their_rate(tmp_path: Path, clock: Clock) -> None:
    rl = limiter(tmp_path, clock)
    limits = ClientLimits(requests_per_minute=6)  # one every ten seconds
    for _ in range(6):
        rl.take_request("a", limits)
    with pytest.raises(RateLimited) as refused:
        rl.take_request("a", limits)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.retry_after == pytest.approx(10)
    headers = refused.value.headers
    assert headers["Retry-After"] == "10" and headers["retry-after-ms"] == "10000"
    assert headers["x-ratelimit-limit-requests"] == "6"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert headers["x-should-retry"] == "true"
    rl.take_request("b", limits)  # another client's bucket is its own
    clock.advance(10)
    rl.take_request("a", limits)
    with pytest.raises(RateLimited):
        rl.take_request("a", limits)
    rl.take_request("a", ClientLimits())  # no limit set: never refused


def test_a_turn_reserves_its_whole_cost_and_gets_back_what_it_did_not_use(
    tmp_path: Path, clock: Clock
) -> None:
    rl = limiter(tmp_path, clock)
    limits = ClientLimits(tokens_per_minute=1200)
    first = rl.reserve("a", limits, 1000)  # prompt 40 + max_tokens 960
    with pytest.raises(RateLimited) as refused:
        rl.reserve("a", limits, 400)
    assert refused.value.retry_after == pytest.approx(10)  # 200 more at 20 a second
    rl.settle(first, 100)  # it used 100: 900 come back
    second = rl.reserve("a", limits, 400)
    assert rl.headers("a", limits)["x-ratelimit-remaining-tokens"] == "700"
    rl.settle(second, 500)  # used more than reserved (it can't, but the books still add up)
    assert rl.headers("a", limits)["x-ratelimit-remaining-tokens"] == "600"
    # A cost larger than the bucket waits for a full bucket, then empties it.
    with pytest.raises(RateLimited) as big:
        rl.reserve("a", limits, 5000)
    assert big.value.retry_after == pytest.approx(30)
    clock.advance(30)
    rl.reserve("a", limits, 5000)
    assert rl.headers("a", limits)["x-ratelimit-remaining-tokens"] == "0"


def test_quotas_refuse_a_turn_that_would_pass_them_until_the_period_turns(
    tmp_path: Path, clock: Clock
) -> None:
    rl = limiter(tmp_path, clock)
    limits = ClientLimits(tokens_per_day=100, tokens_per_month=150)
    rl.settle(rl.reserve("a", limits, 60), 60)
    held = rl.reserve("a", limits, 30)  # in flight: reserved, not yet used
    with pytest.raises(RateLimited) as refused:
        rl.reserve("a", limits, 11)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.headers["x-should-retry"] == "false"
    assert refused.value.retry_after == pytest.approx(60)  # to midnight UTC
    assert "10 are left of this client's 100 tokens per day" in str(refused.value)
    rl.settle(held, 20)  # it used 20 of its 30
    usage = rl.usage("a", limits)
    assert usage["tokens_per_day"] == {
        "period": "2026-01-31",
        "limit": 100,
        "used": 80,
        "reserved": 0,
        "remaining": 20,
        "resets_at": "2026-02-01T00:00:00Z",
    }
    rl.settle(rl.reserve("a", limits, 20), 20)
    clock.advance(60)  # a new day and a new month
    usage = rl.usage("a", limits)
    assert (usage["tokens_per_day"]["used"], usage["tokens_per_month"]["used"]) == (0, 0)
    assert usage["tokens_per_month"]["resets_at"] == "2026-03-01T00:00:00Z"
    rl.settle(rl.reserve("a", limits, 100), 100)
    with pytest.raises(RateLimited):
        rl.reserve("a", limits, 1)


def test_a_turn_that_ends_after_midnight_counts_in_the_day_it_ended(
    tmp_path: Path, clock: Clock
) -> None:
    """As its usage record does: the control plane sums receipts by their end time."""
    rl = limiter(tmp_path, clock)
    limits = ClientLimits(tokens_per_day=100)
    held = rl.reserve("a", limits, 90)
    clock.advance(120)
    rl.settle(held, 70)
    day = rl.usage("a", limits)["tokens_per_day"]
    assert (day["period"], day["used"], day["reserved"], day["remaining"]) == (
        "2026-02-01",
        70,
        0,
        30,
    )


def test_counts_survive_a_restart_and_a_damaged_file_starts_them_over(
    tmp_path: Path, clock: Clock
) -> None:
    limits = ClientLimits(tokens_per_month=1000)
    rl = limiter(tmp_path, clock)
    rl.settle(rl.reserve("a", limits, 300), 250)
    rl.flush()
    stored = json.loads((tmp_path / "usage-counters.json").read_text())
    assert stored == {
        "a": {
            "day": {"period": "2026-01-31", "used": 250},
            "month": {"period": "2026-01", "used": 250},
        }
    }
    again = limiter(tmp_path, clock)
    assert again.usage("a", limits)["tokens_per_month"]["remaining"] == 750
    (tmp_path / "usage-counters.json").write_text("{not json")
    assert limiter(tmp_path, clock).usage("a", limits)["tokens_per_month"]["used"] == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (1, "1s"), (59.5, "1m0s"), (360, "6m0s"), (3725, "1h2m5s")],
)
def test_reset_times_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_failed_write_is_tried_again(tmp_path: Path, clock: Clock) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the folder should be")
    rl = RateLimiter(blocked / "usage-counters.json", clock=clock)
    limits = ClientLimits(tokens_per_day=100)
    rl.settle(rl.reserve("a", limits, 10), 10)
    with pytest.raises(OSError):
        rl.flush()
    blocked.unlink()
    rl.flush()
    assert json.loads((blocked / "usage-counters.json").read_text())["a"]["day"]["used"] == 10
