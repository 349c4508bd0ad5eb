"""Metrics render in the Prometheus text format a scraper accepts."""

import re
from pathlib import Path

import pytest

from daemon.metrics import (
    ACCOUNTS,
    DECLARED,
    EVENTS_APPENDED,
    TIMERS_FIRED,
    Counter,
    Gauge,
    Metrics,
)

README = (Path(__file__).parent.parent.parent / "README.md").read_text()


def test_counters_and_gauges_render_with_help_type_and_labels() -> None:
    """Counters keep per-label totals and gauges are read at render time."""
    m = Metrics()
    m.inc(EVENTS_APPENDED, 3, source="webhook")
    m.inc(EVENTS_APPENDED, source="webhook")
    state = {"static": 2}
    m.read(ACCOUNTS, lambda: [({"state": "static"}, state["static"])])
    state["static"] = 5
    text = m.render()
    assert "# HELP staticipd_events_appended_total Events appended to the log, by source." in text
    assert "# TYPE staticipd_events_appended_total counter" in text
    assert 'staticipd_events_appended_total{source="webhook"} 4' in text
    assert "# TYPE staticipd_accounts gauge" in text
    assert 'staticipd_accounts{state="static"} 5' in text
    assert m.value(EVENTS_APPENDED, source="webhook") == 4
    assert m.value(EVENTS_APPENDED, source="operator") == 0


def test_every_counter_is_exposed_from_the_start_and_a_gauge_once_it_has_a_reader() -> None:
    """A scraper sees every counter (at no samples yet), and no gauge nothing computes."""
    text = Metrics().render()
    for metric in DECLARED:
        assert (f"# TYPE {metric.name} counter" in text) == isinstance(metric, Counter)
    assert "staticipd_accounts" not in text


def test_a_label_the_counter_does_not_declare_is_refused() -> None:
    """A misspelt or missing label raises instead of starting a series nobody scrapes."""
    m = Metrics()
    with pytest.raises(ValueError, match="staticipd_events_appended_total"):
        m.inc(EVENTS_APPENDED, sourse="webhook")
    with pytest.raises(ValueError, match="staticipd_timers_fired_total"):
        m.inc(TIMERS_FIRED, source="timer")
    assert "staticipd_events_appended_total{" not in m.render()


def test_a_gauge_that_is_not_registered_cannot_be_read() -> None:
    """Attaching a reader to a gauge the registry does not hold is an error, not a new series."""
    with pytest.raises(ValueError, match="not_here"):
        Metrics().read(Gauge("not_here", "n"), lambda: [({}, 1.0)])


def test_label_values_are_escaped() -> None:
    """Quotes and newlines in label values cannot break the exposition format."""
    c = Counter("c_total", "c", ("route",))
    m = Metrics([c])
    m.inc(c, route='a"b\nc')
    assert 'c_total{route="a\\"b\\nc"} 1' in m.render()


def test_readme_lists_every_metric_with_its_labels_and_kind() -> None:
    """README's metrics paragraph names exactly the metrics the daemon exposes, with labels."""
    paragraph = README.split("**Metrics**", 1)[1].split("\n\n", 1)[0]
    counters, gauges = paragraph.split("gauges read from the projection", 1)
    for part, kind in ((counters, Counter), (gauges, Gauge)):
        listed = {
            name: tuple(label.split("=")[0] for label in labels.split(",") if label)
            for name, labels in re.findall(r"`(staticipd_\w+)(?:\{([^}]*)\})?`", part)
        }
        declared = {m.name: m.labels for m in DECLARED if isinstance(m, kind)}
        assert listed == declared
