"""Metrics render in the Prometheus text format a scraper accepts."""

from daemon.metrics import Metrics


def test_counters_and_gauges_render_with_help_type_and_labels() -> None:
    """Counters keep per-label totals and gauges are read at render time."""
    m = Metrics()
    m.counter("staticipd_events_appended_total", "Events appended to the log.")
    m.inc("staticipd_events_appended_total", 3, source="webhook")
    m.inc("staticipd_events_appended_total", source="webhook")
    state = {"static": 2}
    m.gauge(
        "staticipd_accounts",
        "Accounts per state.",
        lambda: [({"state": "static"}, state["static"])],
    )
    state["static"] = 5
    text = m.render()
    assert "# TYPE staticipd_events_appended_total counter" in text
    assert 'staticipd_events_appended_total{source="webhook"} 4' in text
    assert 'staticipd_accounts{state="static"} 5' in text
    assert m.value("staticipd_events_appended_total", source="webhook") == 4
    assert m.value("staticipd_events_appended_total", source="operator") == 0
    assert m.value("never_registered_total") == 0


def test_label_values_are_escaped() -> None:
    """Quotes and newlines in label values cannot break the exposition format."""
    m = Metrics()
    m.counter("c_total", "c")
    m.inc("c_total", route='a"b\nc')
    assert 'c_total{route="a\\"b\\nc"} 1' in m.render()
