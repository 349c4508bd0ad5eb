"""Counters and gauges exposed at `/metrics` in the Prometheus text format (version 0.0.4).

Every metric the daemon exposes is declared here once, with its name, help text, kind and label
names; callers pass the declared object, so a misspelt metric is an error the checker reports
rather than a new series nobody scrapes. Gauges that describe state (accounts per migration
state, pending timers) are read from the projection when scraped, so they can never drift from
the log; only event counts live here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

Labels = tuple[tuple[str, str], ...]
GaugeReader = Callable[[], Iterable[tuple[Mapping[str, str], float]]]


@dataclass(frozen=True)
class Counter:
    """A count that only goes up, kept per combination of its labels' values."""

    kind: ClassVar[str] = "counter"
    name: str
    help: str
    labels: tuple[str, ...] = ()
    _label_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_label_set", frozenset(self.labels))


@dataclass(frozen=True)
class Gauge:
    """A value read when scraped, from whatever the process attaches with `Metrics.read`."""

    kind: ClassVar[str] = "gauge"
    name: str
    help: str
    labels: tuple[str, ...] = ()


Metric = Counter | Gauge

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

ACCOUNTS = Gauge("staticipd_accounts", "Accounts per migration state.", ("state",))
ACCOUNTS_FLAGGED = Gauge(
    "staticipd_accounts_flagged", "Accounts per flag (invalid, sync_error, ...).", ("flag",)
)
LOG_POSITION = Gauge("staticipd_log_position", "Last log position applied to the projection.")

DECLARED: tuple[Metric, ...] = (
    WEBHOOKS,
    WEBHOOK_DELTAS,
    AUTH_EVENTS,
    EVENTS_APPENDED,
    TIMERS_FIRED,
    EFFECTS,
    ACCOUNTS,
    ACCOUNTS_FLAGGED,
    LOG_POSITION,
)
"""Every metric of the daemon; `Metrics()` registers them all."""


class Metrics:
    """The registry: counters incremented by the process, gauges computed at scrape time.

    A gauge is exposed once something attaches its reader; until then it is left out.
    """

    def __init__(self, declared: Iterable[Metric] = DECLARED) -> None:
        self._metrics: dict[str, Metric] = {}
        self._counts: dict[str, defaultdict[Labels, float]] = {}
        self._readers: dict[str, GaugeReader] = {}
        for metric in declared:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} declared twice")
            self._metrics[metric.name] = metric
            if isinstance(metric, Counter):
                self._counts[metric.name] = defaultdict(float)

    def inc(self, counter: Counter, amount: float = 1.0, **labels: str) -> None:
        if labels.keys() != counter._label_set:
            raise ValueError(f"{counter.name} has labels {counter.labels}, not {tuple(labels)}")
        key = tuple(labels.items()) if len(labels) < 2 else tuple(sorted(labels.items()))
        self._counts[counter.name][key] += amount

    def read(self, gauge: Gauge, reader: GaugeReader) -> None:
        """Attach what computes `gauge` at each scrape (replacing any earlier reader)."""
        if self._metrics.get(gauge.name) is not gauge:
            raise ValueError(f"gauge {gauge.name} is not registered here")
        self._readers[gauge.name] = reader

    def value(self, counter: Counter, **labels: str) -> float:
        counts = self._counts.get(counter.name)
        return 0.0 if counts is None else counts.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name, metric in sorted(self._metrics.items()):
            if isinstance(metric, Counter):
                samples = [(dict(k), v) for k, v in self._counts[name].items()]
            elif name in self._readers:
                samples = [(dict(labels), v) for labels, v in self._readers[name]()]
            else:
                continue
            lines.append(f"# HELP {name} {metric.help}")
            lines.append(f"# TYPE {name} {metric.kind}")
            for labels, value in samples:
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
