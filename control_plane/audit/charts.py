"""Usage at a glance: bar charts of the receipts, drawn server-side as SVG.

Three charts, each from the receipts an operator may see (pass them through its
``AuditScope``), over whole UTC days:

- **tokens per client per day** (prompt plus completion) and **requests per client per
  day**: grouped bars, one series per client (the eight busiest; the rest summed as
  "other clients");
- **time to first token per node**: p50, p90 and p99 over every turn of the period's
  sessions, from the turn times the node signed into each usage record
  (``first_token_ms``, kept on the receipt). Receipts logged before nodes recorded them
  have none and count for nothing here. (It replaces a chart of one-shot request
  durations, which was only an upper bound standing in for this.)

Geometry is computed here; ``audit/charts/bars.svg`` only prints it (autoescaped: client
and node ids are text, never markup). Every bar carries its series, category and value
as ``data-`` attributes and a ``<title>`` a reader sees on hover. No JavaScript, nothing
fetched from anywhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import F, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

DEFAULT_DAYS = 14
MAX_DAYS = 92
MAX_SERIES = 8
OTHERS = "other clients"
PERCENTILES = (50, 90, 99)
# Distinguishable in colour and in grey (the Okabe-Ito palette), then two greys.
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#000000",
    "#999999",
)

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 56


@dataclass(frozen=True)
class DayRange:
    """Whole UTC days ``first`` to ``last``, both included."""

    first: date
    last: date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError("the period ends before it starts")
        if (self.last - self.first).days + 1 > MAX_DAYS:
            raise ValueError(f"at most {MAX_DAYS} days")

    @classmethod
    def ending(cls, last: date | None = None, days: int = DEFAULT_DAYS) -> DayRange:
        last = last or datetime.now(UTC).date()
        return cls(last - timedelta(days=days - 1), last)

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    @property
    def since(self) -> datetime:
        return datetime.combine(self.first, time.min, tzinfo=UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time.min, tzinfo=UTC)


@dataclass(frozen=True)
class Bar:
    series: str
    category: str
    value: float
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class Tick:
    value: str
    y: float


@dataclass(frozen=True)
class Label:
    text: str
    x: float


@dataclass
class Chart:
    """A grouped bar chart, laid out: what the SVG template prints."""

    name: str
    title: str
    unit: str
    series: list[tuple[str, str]]  # (name, colour), in legend order
    bars: list[Bar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    note: str = ""
    empty: bool = False
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def legend(self) -> list[tuple[str, str, float]]:
        """(name, colour, x) of each legend entry, left to right under the plot."""
        out, x = [], float(LEFT)
        for name, color in self.series:
            out.append((name, color, x))
            x += 14 + 6.5 * len(name) + 18
        return out

    @property
    def plot(self) -> dict[str, float]:
        return {
            "left": LEFT,
            "top": TOP,
            "right": self.width - RIGHT,
            "bottom": self.height - BOTTOM,
            "width": self.width - LEFT - RIGHT,
            "height": self.height - TOP - BOTTOM,
        }

    def svg(self) -> SafeString:
        # Safe: the template autoescapes every text it prints.
        return mark_safe(render_to_string("audit/charts/bars.svg", {"chart": self}))  # noqa: S308


def _nice_step(top: float) -> float:
    """A 1-2-5 step that cuts ``[0, top]`` into about four parts."""
    if top <= 0:
        return 1.0
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def short(category: str) -> str:
    """A category's axis label: ``03-01`` for the day ``2025-03-01``, else as it is."""
    try:
        return date.fromisoformat(category).strftime("%m-%d")
    except ValueError:
        return category


def bar_chart(
    *,
    name: str,
    title: str,
    unit: str,
    categories: Sequence[str],
    series: Sequence[str],
    values: Mapping[tuple[str, str], float],
    describe: Any = None,
    note: str = "",
    label_every: int = 1,
) -> Chart:
    """Lay out grouped bars: for each category, one bar per series (zero bars are drawn
    flat, so every series has a bar in every category)."""
    colors = {s: PALETTE[min(i, len(PALETTE) - 1)] for i, s in enumerate(series)}
    if OTHERS in colors:
        colors[OTHERS] = PALETTE[-1]
    chart = Chart(name=name, title=title, unit=unit, series=[(s, colors[s]) for s in series])
    chart.note = note
    plot = chart.plot
    top_value = max(values.values(), default=0)
    chart.empty = not series or top_value <= 0
    step = _nice_step(top_value)
    top = step * max(1, math.ceil(top_value / step))
    for i in range(round(top / step) + 1):
        value = i * step
        chart.ticks.append(
            Tick(_fmt(value), round(plot["bottom"] - plot["height"] * value / top, 2))
        )
    if not categories:
        return chart
    slot = plot["width"] / len(categories)
    bar_width = max(1.0, slot * 0.8 / max(1, len(series)))
    for c, category in enumerate(categories):
        start = plot["left"] + c * slot + slot * 0.1
        if c % label_every == 0:
            chart.labels.append(Label(short(category), plot["left"] + c * slot + slot / 2))
        for s, name_ in enumerate(series):
            value = values.get((name_, category), 0)
            height = plot["height"] * value / top if top else 0
            text = describe(name_, category, value) if describe else f"{name_} {category}: {value}"
            chart.bars.append(
                Bar(
                    series=name_,
                    category=category,
                    value=value,
                    x=round(start + s * bar_width, 2),
                    y=round(plot["bottom"] - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                    color=colors[name_],
                    title=text,
                )
            )
    return chart


def _top_series(totals: Mapping[str, float]) -> tuple[list[str], set[str]]:
    """The busiest ``MAX_SERIES`` series by name order, and those summed as others."""
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    if len(ranked) <= MAX_SERIES:
        return sorted(ranked), set()
    kept = ranked[: MAX_SERIES - 1]
    return sorted(kept), set(ranked[MAX_SERIES - 1 :])


def daily_usage(receipts: QuerySet[Any], days: DayRange) -> tuple[Chart, Chart]:
    """Tokens and requests per client per UTC day, from ``receipts`` (already scoped)."""
    rows = (
        receipts.filter(ended_at__gte=days.since, ended_at__lt=days.until)
        .annotate(day=TruncDate("ended_at", tzinfo=UTC))
        .values("client", "day")
        .annotate(
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")), requests=Sum("request_count")
        )
        .order_by()
    )
    tokens: dict[tuple[str, str], float] = defaultdict(float)
    requests: dict[tuple[str, str], float] = defaultdict(float)
    totals: dict[str, float] = defaultdict(float)
    collected = [(r["client"], r["day"], r["tokens"] or 0, r["requests"] or 0) for r in rows]
    for client, _, used, _ in collected:
        totals[client] += used
    kept, others = _top_series(totals)
    series = kept + ([OTHERS] if others else [])
    for client, day, used, asked in collected:
        key = (OTHERS if client in others else client, _day(day).isoformat())
        tokens[key] += used
        requests[key] += asked
    categories = [d.isoformat() for d in days.days]
    every = max(1, math.ceil(len(categories) / 14))
    period = f"{days.first.isoformat()} to {days.last.isoformat()} (UTC)"
    return (
        bar_chart(
            name="tokens",
            title=f"Tokens per client per day, {period}",
            unit="tokens",
            categories=categories,
            series=series,
            values=tokens,
            describe=lambda s, c, v: f"{s} on {c}: {v:,.0f} tokens",
            note="Prompt plus completion tokens of the sessions that ended that day.",
            label_every=every,
        ),
        bar_chart(
            name="requests",
            title=f"Requests per client per day, {period}",
            unit="requests",
            categories=categories,
            series=series,
            values=requests,
            describe=lambda s, c, v: f"{s} on {c}: {v:,.0f} requests",
            note="Requests of the sessions that ended that day.",
            label_every=every,
        ),
    )


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of values sorted ascending (one of the values, never between)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def ttft_by_node(receipts: QuerySet[Any], days: DayRange) -> Chart:
    """p50, p90, p99 of every turn's time to first token per node, in milliseconds.

    Turns count by the day their session ended (like the other charts), so a session
    belongs to one period, all of its turns with it.
    """
    rows: Iterable[tuple[str, list[int]]] = (
        receipts.filter(
            ended_at__gte=days.since, ended_at__lt=days.until, first_token_ms__isnull=False
        )
        .order_by()
        .values_list("node", "first_token_ms")
        .iterator()
    )
    turns: dict[str, list[float]] = defaultdict(list)
    for node, times in rows:
        turns[node].extend(float(ms) for ms in times or ())
    nodes = sorted(node for node, times in turns.items() if times)
    counts = {node: len(turns[node]) for node in nodes}
    values: dict[tuple[str, str], float] = {}
    for node in nodes:
        ordered = sorted(turns[node])
        for pct in PERCENTILES:
            values[(f"p{pct}", node)] = percentile(ordered, pct)
    return bar_chart(
        name="ttft",
        title=(
            f"Time to first token per node, {days.first.isoformat()} to "
            f"{days.last.isoformat()} (UTC)"
        ),
        unit="ms",
        categories=nodes,
        series=[f"p{pct}" for pct in PERCENTILES],
        values=values,
        describe=lambda s, c, v: f"{c} {s}: {v:,.0f} ms over {counts[c]:,} turns",
        note=(
            "Every turn, from its arrival at the node (queue and prefill included) to its "
            "first text, as the node signed it; older receipts hold no times."
        ),
    )


CHARTS = ("tokens", "requests", "ttft")


def usage_charts(receipts: QuerySet[Any], days: DayRange) -> dict[str, Chart]:
    """Every chart of ``receipts`` (already scoped) over ``days``, by name."""
    tokens, requests = daily_usage(receipts, days)
    return {"tokens": tokens, "requests": requests, "ttft": ttft_by_node(receipts, days)}


def usage_chart(name: str, receipts: QuerySet[Any], days: DayRange) -> Chart:
    """One chart by name (``CHARTS``); ``KeyError`` for another name."""
    if name == "ttft":
        return ttft_by_node(receipts, days)
    tokens, requests = daily_usage(receipts, days)
    return {"tokens": tokens, "requests": requests}[name]
