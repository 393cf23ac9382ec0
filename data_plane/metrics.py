"""The node's Prometheus metrics (docs/operations.md, "Metrics").

Content-free by construction: a series is labelled only by the listener, the route's
template (never the path a client sent: an unmatched path counts as ``-``), the status,
the model's name, version and file hash, a queue's name, and, only with
``SANCTUM_DP_METRICS__PER_CLIENT`` on, the client's id. Gauges are read from the
runtime at scrape time (:class:`NodeState`, filled by the runtime); counters and
histograms are updated where the work happens, each update a few dict operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
INTER_TOKEN_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
UNMATCHED = "-"


@dataclass(frozen=True)
class EngineState:
    name: str
    version: str
    sha256: str
    slots: int
    slots_busy: int
    running: int
    waiting: int
    parked_sequences: int
    parked_bytes: int


@dataclass(frozen=True)
class NodeState:
    """What a scrape reads of the node now: counts and ids, never content."""

    node: str
    ready: bool
    config_version: int | None
    config_expires_at: float | None
    sessions_open: int
    outbox_pending: int
    queues: dict[str, int]
    engines: list[EngineState] = field(default_factory=list)


# Per loaded model: (series name after sanctum_node_, EngineState field, help).
_PER_ENGINE = (
    ("slots", "slots", "KV sequences decoded together"),
    ("slots_busy", "slots_busy", "sequences decoding now"),
    ("generations_running", "running", "generations holding a slot"),
    ("generations_waiting", "waiting", "generations waiting for a slot"),
    ("parked_sequences", "parked_sequences", "KV states parked in RAM"),
    ("parked_bytes", "parked_bytes", "RAM held by parked KV states"),
)


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], NodeState]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        state = self._read()
        yield _gauge("sanctum_node_ready", "1 when the node serves clients", state.ready)
        yield _gauge(
            "sanctum_node_config_version",
            "version of the signed config in force (-1: none)",
            -1 if state.config_version is None else state.config_version,
        )
        if state.config_expires_at is not None:
            yield _gauge(
                "sanctum_node_config_expiry_timestamp_seconds",
                "when the config in force expires",
                state.config_expires_at,
            )
        yield _gauge("sanctum_node_sessions_open", "sessions open", state.sessions_open)
        yield _gauge(
            "sanctum_node_outbox_pending",
            "usage records not yet acknowledged by the control plane",
            state.outbox_pending,
        )
        queues = GaugeMetricFamily(
            "sanctum_node_queue_depth", "work waiting, by queue", labels=["queue"]
        )
        for name, depth in sorted(state.queues.items()):
            queues.add_metric([name], depth)
        yield queues
        models = InfoMetricFamily(
            "sanctum_node_model", "the loaded models", labels=["model", "version", "sha256"]
        )
        families = {
            attr: GaugeMetricFamily(f"sanctum_node_{name}", text, labels=["model"])
            for name, attr, text in _PER_ENGINE
        }
        for e in state.engines:
            models.add_metric([e.name, e.version, e.sha256], {})
            for attr, family in families.items():
                family.add_metric([e.name], getattr(e, attr))
        yield models
        yield from families.values()


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


class TurnTiming:
    """One generation's clock: time to its first piece of text, then between pieces."""

    __slots__ = ("_client", "_last", "_metrics", "_model", "_started", "first_token_seconds")

    def __init__(self, metrics: NodeMetrics, model: str, client: str) -> None:
        self._metrics, self._model, self._client = metrics, model, client
        self._started = time.monotonic()
        self._last: float | None = None
        # What the histogram observed, kept for the session's usage record (None until
        # the first piece of text; a turn that gave none has no time to first token).
        self.first_token_seconds: float | None = None

    def piece(self) -> None:
        now = time.monotonic()
        if self._last is None:
            self.first_token_seconds = now - self._started
            self._metrics.ttft.labels(self._model).observe(self.first_token_seconds)
        else:
            self._metrics.inter_token.labels(self._model).observe(now - self._last)
        self._last = now

    def done(self, prompt_tokens: int, completion_tokens: int) -> None:
        m = self._metrics
        m.prompt_tokens.labels(self._model).inc(prompt_tokens)
        m.completion_tokens.labels(self._model).inc(completion_tokens)
        if m.per_client:
            m.client_tokens.labels(self._client, self._model, "prompt").inc(prompt_tokens)
            m.client_tokens.labels(self._client, self._model, "completion").inc(completion_tokens)
            m.client_generations.labels(self._client, self._model).inc()


class NodeMetrics:
    """The node's registry: its instruments, and its state read at scrape time."""

    def __init__(self, *, per_client: bool = False) -> None:
        self.per_client = per_client
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sanctum_node_requests",
            "requests answered, by listener, route template and status",
            ["listener", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sanctum_node_request_duration_seconds",
            "time to the answer's headers, by listener and route template",
            ["listener", "route"],
            registry=r,
        )
        self.ttft = Histogram(
            "sanctum_node_time_to_first_token_seconds",
            "from a generation's start to its first piece of text",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "sanctum_node_inter_token_seconds",
            "between two pieces of a generation's text",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "sanctum_node_prompt_tokens", "prompt tokens evaluated", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "sanctum_node_completion_tokens", "tokens generated", ["model"], registry=r
        )
        self.client_tokens = Counter(
            "sanctum_node_client_tokens",
            "tokens by client (SANCTUM_DP_METRICS__PER_CLIENT only)",
            ["client", "model", "kind"],
            registry=r,
        )
        self.client_generations = Counter(
            "sanctum_node_client_generations",
            "generations by client (SANCTUM_DP_METRICS__PER_CLIENT only)",
            ["client", "model"],
            registry=r,
        )

    def watch(self, read: Callable[[], NodeState]) -> None:
        """Read the node's state from ``read`` at every scrape."""
        self.registry.register(_StateCollector(read))

    def request(self, listener: str, route: str | None, status: int, seconds: float) -> None:
        template = route or UNMATCHED
        self.requests.labels(listener, template, str(status)).inc()
        self.request_seconds.labels(listener, template).observe(seconds)

    def turn(self, model: str, client: str) -> TurnTiming:
        return TurnTiming(self, model, client)
