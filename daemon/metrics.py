"""Counters, histograms and gauges exposed at `/metrics`, in the official Prometheus client's text.

Every metric the daemon exposes is declared here once, with its name, help text, kind and label
names; callers pass the declared object, so a misspelt metric is an error the checker reports
rather than a new series nobody scrapes. Each `Metrics` owns its own `CollectorRegistry` (several
daemons can run in one process, as the tests do), with the library's process, platform and
garbage-collector collectors on it. Gauges that describe state (accounts per migration state,
flags, the log position) are read from the projection when scraped, so they can never drift from
the log; only counts and observations are kept here.

Counts and observations are plain numbers, added to on the event loop's thread (the only one
that counts) and handed to the library as metric families at each scrape: the library's own
counters take a lock per increment, and a webhook counts five times and observes once.

Label values are bounded by construction: a route is its canonical path (`/v1/accounts/{id}`,
never the URL asked for), a status an HTTP status or `error`, an operation or effect one of a few
names the code chooses.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import prometheus_client
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric as Family
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "ACCOUNTS",
    "ACCOUNTS_FLAGGED",
    "AUTH_EVENTS",
    "CONTENT_TYPE",
    "DECLARED",
    "EFFECTS",
    "EFFECT_ATTEMPTS",
    "EFFECT_DURATION",
    "EVENTS_APPENDED",
    "HTTP_REQUEST_DURATION",
    "IP_LIST_CHANGES",
    "LOG_BATCH_EVENTS",
    "LOG_COMMIT_DURATION",
    "LOG_POSITION",
    "PROVIDER_REQUESTS",
    "PROVIDER_REQUEST_DURATION",
    "TIMERS_FIRED",
    "TIMER_LATENESS",
    "WEBHOOKS",
    "WEBHOOK_DELTAS",
    "Counter",
    "Gauge",
    "Histogram",
    "Metrics",
]

GaugeReader = Callable[[], Iterable[tuple[Mapping[str, str], float]]]

# The `_created` series double every counter and histogram and say nothing an operator graphs.
# (The library leaves this function unannotated.)
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
"""The content type of `Metrics.render()`'s text (the library's latest text format)."""


@dataclass(frozen=True)
class Counter:
    """A count that only goes up, kept per combination of its labels' values."""

    kind: ClassVar[str] = "counter"
    name: str
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Histogram:
    """Observations (durations, sizes) counted into `buckets`, per combination of labels."""

    kind: ClassVar[str] = "histogram"
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = prometheus_client.Histogram.DEFAULT_BUCKETS


@dataclass(frozen=True)
class Gauge:
    """A value read when scraped, from whatever the process attaches with `Metrics.read`."""

    kind: ClassVar[str] = "gauge"
    name: str
    help: str
    labels: tuple[str, ...] = ()


Metric = Counter | Histogram | Gauge

WEBHOOKS = Counter("staticipd_webhooks_total", "Webhook deliveries by result.", ("result",))
WEBHOOK_DELTAS = Counter(
    "staticipd_webhook_deltas_total",
    "Webhook deltas recorded, recognised as duplicates, skipped (other objects) or quarantined.",
    ("result",),
)
AUTH_EVENTS = Counter(
    "staticipd_auth_events_total", "Auth events from the application by result.", ("result",)
)
EVENTS_APPENDED = Counter(
    "staticipd_events_appended_total", "Events appended to the log, by source.", ("source",)
)
TIMERS_FIRED = Counter("staticipd_timers_fired_total", "Durable timers fired.")
EFFECTS = Counter("staticipd_effects_total", "Effect attempts by outcome.", ("outcome",))
PROVIDER_REQUESTS = Counter(
    "staticipd_provider_requests_total",
    "HTTP requests to the provider's API by operation and status (an HTTP status, or error).",
    ("operation", "status"),
)
IP_LIST_CHANGES = Counter(
    "staticipd_ip_list_changes_total",
    "Changes of the provider's IP lists seen by the watcher, by list.",
    ("kind",),
)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_REQUEST_DURATION = Histogram(
    "staticipd_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route (its path template) and status.",
    ("method", "route", "status"),
    _FAST,
)
LOG_COMMIT_DURATION = Histogram(
    "staticipd_log_commit_duration_seconds",
    "Time the log's writer took to commit one batch (BEGIN to COMMIT, fsync included).",
    (),
    _FAST,
)
LOG_BATCH_EVENTS = Histogram(
    "staticipd_log_batch_events",
    "Events written by one commit of the log's writer (group commit batch size).",
    (),
    (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 20000),
)
TIMER_LATENESS = Histogram(
    "staticipd_timer_lateness_seconds",
    "How long after its due time a durable timer fired.",
    (),
    (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0),
)
EFFECT_DURATION = Histogram(
    "staticipd_effect_duration_seconds",
    "Time one attempt at an effect took, by effect and result (ok or error).",
    ("effect", "result"),
    (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
EFFECT_ATTEMPTS = Histogram(
    "staticipd_effect_attempts",
    "Attempts an effect took until it settled, by effect and outcome (succeeded or gave_up).",
    ("effect", "outcome"),
    (1, 2, 3, 5, 8, 13, 21),
)
PROVIDER_REQUEST_DURATION = Histogram(
    "staticipd_provider_request_duration_seconds",
    "Time one HTTP request to the provider's API took, by operation.",
    ("operation",),
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

ACCOUNTS = Gauge("staticipd_accounts", "Accounts per migration state.", ("state",))
ACCOUNTS_FLAGGED = Gauge(
    "staticipd_accounts_flagged", "Accounts per flag (invalid, sync_error, ...).", ("flag",)
)
LOG_POSITION = Gauge("staticipd_log_position", "Last log position applied to the projection.")
LEADER = Gauge(
    "staticipd_leader",
    "1 while this instance takes writes (the leader; always on SQLite), 0 on a standby.",
)

DECLARED: tuple[Metric, ...] = (
    WEBHOOKS,
    WEBHOOK_DELTAS,
    AUTH_EVENTS,
    EVENTS_APPENDED,
    TIMERS_FIRED,
    EFFECTS,
    PROVIDER_REQUESTS,
    IP_LIST_CHANGES,
    HTTP_REQUEST_DURATION,
    LOG_COMMIT_DURATION,
    LOG_BATCH_EVENTS,
    TIMER_LATENESS,
    EFFECT_DURATION,
    EFFECT_ATTEMPTS,
    PROVIDER_REQUEST_DURATION,
    ACCOUNTS,
    ACCOUNTS_FLAGGED,
    LOG_POSITION,
    LEADER,
)
"""Every metric of the daemon; `Metrics()` registers them all."""

_Key = tuple[str, tuple[tuple[str, str], ...]]


class _Count:
    """One counter series: a number that only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up, not by {amount}")
        self.value += amount


class _Buckets:
    """One histogram series: observations per bucket (not cumulative), and their sum."""

    __slots__ = ("bounds", "counts", "les", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ascending, the last one +Inf
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        # Each bound as the library writes it in `le` ("0.005", "+Inf"); the library is untyped.
        self.les = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]

    def observe(self, value: float) -> None:
        if value == value:  # NaN falls in no bucket, as the library counts it
            self.counts[bisect_left(self.bounds, value)] += 1  # a bucket's bound is inclusive
        self.sum += value


_Series = _Count | _Buckets


class Metrics:
    """One daemon's registry: counters and histograms fed by the process, gauges read at scrape.

    A gauge is exposed once something attaches its reader; until then it is left out.
    `process_collectors=False` leaves out the library's process, platform and GC metrics.
    """

    def __init__(
        self, declared: Iterable[Metric] = DECLARED, *, process_collectors: bool = True
    ) -> None:
        self.registry = CollectorRegistry()
        self._declared: dict[str, Metric] = {}
        self._kept = _KeptMetrics()
        # Metric and label values -> its series: one dict lookup per `inc` on the hot path.
        self._children: dict[_Key, _Series] = {}
        self._gauges = _ProjectionGauges()
        for metric in declared:
            if metric.name in self._declared:
                raise ValueError(f"metric {metric.name} declared twice")
            self._declared[metric.name] = metric
            if isinstance(metric, Gauge):
                self._gauges.declared[metric.name] = metric
                continue
            self._kept.series[metric.name] = (metric, {})
            if not metric.labels:  # shown (at 0) from the start, as the library does
                self._child(metric, {})
        self.registry.register(self._kept)
        self.registry.register(self._gauges)
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _child(self, metric: Counter | Histogram, labels: dict[str, str]) -> _Series:
        key = (metric.name, tuple(labels.items()))
        child = self._children.get(key)
        if child is None:
            child = self._new_child(metric, labels)
            self._children[key] = child
        return child

    def _new_child(self, metric: Counter | Histogram, labels: dict[str, str]) -> _Series:
        if self._declared.get(metric.name) is not metric:
            raise ValueError(f"metric {metric.name} is not registered here")
        if set(labels) != set(metric.labels) or len(labels) != len(metric.labels):
            raise ValueError(f"{metric.name} has labels {metric.labels}, not {tuple(labels)}")
        values = tuple(str(labels[name]) for name in metric.labels)
        _, series = self._kept.series[metric.name]
        child = series.get(values)
        if child is None:
            if isinstance(metric, Counter):
                child = _Count()
            else:
                child = _Buckets(tuple(sorted({*metric.buckets, math.inf})))
            series[values] = child
        return child

    def inc(self, counter: Counter, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (default 1) to the counter's series with these label values."""
        child = self._child(counter, labels)
        assert isinstance(child, _Count)  # a Counter's series is made a _Count
        child.inc(amount)

    def observe(self, histogram: Histogram, value: float, **labels: str) -> None:
        """Count one observation (a duration in seconds, a size) into the histogram."""
        self.observer(histogram, **labels)(value)

    def observer(self, histogram: Histogram, **labels: str) -> Callable[[float], None]:
        """`observe` for one series of the histogram, for a caller that keeps it."""
        child = self._child(histogram, labels)
        assert isinstance(child, _Buckets)  # a Histogram's series is made _Buckets
        return child.observe

    def read(self, gauge: Gauge, reader: GaugeReader) -> None:
        """Attach what computes `gauge` at each scrape (replacing any earlier reader)."""
        if self._declared.get(gauge.name) is not gauge:
            raise ValueError(f"gauge {gauge.name} is not registered here")
        self._gauges.readers[gauge.name] = reader

    def value(self, counter: Counter, **labels: str) -> float:
        """The counter's current total for these label values (0 when never counted)."""
        name = counter.name if counter.name.endswith("_total") else f"{counter.name}_total"
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE`)."""
        return prometheus_client.generate_latest(self.registry)


class _KeptMetrics(Collector):
    """The counters and histograms `Metrics` keeps, as the library's families at each scrape."""

    def __init__(self) -> None:
        # Metric name -> (its declaration, label values -> series), in declaration order.
        self.series: dict[str, tuple[Counter | Histogram, dict[tuple[str, ...], _Series]]] = {}

    def collect(self) -> Iterator[Family]:
        for metric, series in self.series.values():
            if isinstance(metric, Counter):
                yield _counter_family(metric, series)
            else:
                yield _histogram_family(metric, series)


def _counter_family(metric: Counter, series: dict[tuple[str, ...], _Series]) -> Family:
    name = metric.name.removesuffix("_total")
    family = Family(name, metric.help, "counter")
    for values, count in list(series.items()):
        assert isinstance(count, _Count)
        labels = dict(zip(metric.labels, values, strict=True))
        family.add_sample(f"{name}_total", labels, count.value)
    return family


def _histogram_family(metric: Histogram, series: dict[tuple[str, ...], _Series]) -> Family:
    family = Family(metric.name, metric.help, "histogram")
    for values, buckets in list(series.items()):
        assert isinstance(buckets, _Buckets)
        labels = dict(zip(metric.labels, values, strict=True))
        total = 0
        for le, n in zip(buckets.les, buckets.counts, strict=True):
            total += n
            family.add_sample(f"{metric.name}_bucket", {**labels, "le": le}, total)
        family.add_sample(f"{metric.name}_count", labels, total)
        family.add_sample(f"{metric.name}_sum", labels, buckets.sum)
    return family


class _ProjectionGauges(Collector):
    """The gauges computed from the projection at each scrape, by the readers attached."""

    def __init__(self) -> None:
        self.declared: dict[str, Gauge] = {}
        self.readers: dict[str, GaugeReader] = {}

    def describe(self) -> list[GaugeMetricFamily]:
        # Names only, so the registry refuses a clash at registration, not at the first scrape.
        return [GaugeMetricFamily(g.name, g.help, labels=g.labels) for g in self.declared.values()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, gauge in self.declared.items():
            reader = self.readers.get(name)
            if reader is None:
                continue
            family = GaugeMetricFamily(name, gauge.help, labels=gauge.labels)
            for labels, value in reader():
                family.add_metric([str(labels[label]) for label in gauge.labels], float(value))
            yield family
