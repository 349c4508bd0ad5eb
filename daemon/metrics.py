"""Counters and gauges exposed at `/metrics` in the Prometheus text format (version 0.0.4).

Gauges that describe state (accounts per migration state, pending timers) are read from the
projection when scraped, so they can never drift from the log; only event counts live here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """A small registry: counters incremented by the process, gauges computed at scrape time."""

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, defaultdict[Labels, float]] = {}
        self._gauges: dict[str, Callable[[], Iterable[tuple[Mapping[str, str], float]]]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, defaultdict(float))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(labels.items()) if len(labels) < 2 else tuple(sorted(labels.items()))
        self._counters[name][key] += amount

    def gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Mapping[str, str], float]]],
    ) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        counts = self._counters.get(name)
        return 0.0 if counts is None else counts.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "counter":
                samples = [(dict(k), v) for k, v in self._counters[name].items()]
            else:
                samples = [(dict(labels), v) for labels, v in self._gauges[name]()]
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
