"""Metrics render in the Prometheus text format a scraper accepts, one registry per daemon."""

import math
import re
from pathlib import Path

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import (
    ACCOUNTS,
    DECLARED,
    EVENTS_APPENDED,
    HTTP_REQUEST_DURATION,
    TIMERS_FIRED,
    Counter,
    Gauge,
    Histogram,
    Metrics,
)

README = (Path(__file__).parent.parent.parent / "README.md").read_text()


def families(m: Metrics) -> dict[str, dict[str, object]]:
    """Metric family name -> {"type", "samples": {(sample name, sorted labels): value}}."""
    return {
        f.name: {
            "type": f.type,
            "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples},
        }
        for f in text_string_to_metric_families(m.render().decode())
    }


def test_counters_and_gauges_render_with_help_type_and_labels() -> None:
    """Counters keep per-label totals and gauges are read at render time."""
    m = Metrics()
    m.inc(EVENTS_APPENDED, 3, source="webhook")
    m.inc(EVENTS_APPENDED, source="webhook")
    state = {"static": 2}
    m.read(ACCOUNTS, lambda: [({"state": "static"}, state["static"])])
    state["static"] = 5
    text = m.render().decode()
    assert "# HELP staticipd_events_appended_total Events appended to the log, by source." in text
    assert "# TYPE staticipd_events_appended_total counter" in text
    parsed = families(m)
    assert parsed["staticipd_events_appended"]["samples"] == {
        ("staticipd_events_appended_total", (("source", "webhook"),)): 4.0
    }
    assert parsed["staticipd_accounts"] == {
        "type": "gauge",
        "samples": {("staticipd_accounts", (("state", "static"),)): 5.0},
    }
    assert m.value(EVENTS_APPENDED, source="webhook") == 4
    assert m.value(EVENTS_APPENDED, source="operator") == 0


def test_histograms_count_observations_into_buckets() -> None:
    """An observation lands in every bucket at or above it, and in the count and sum."""
    m = Metrics(process_collectors=False)
    labels = {"method": "GET", "route": "/v1/accounts/{account_id}", "status": "200"}
    m.observe(HTTP_REQUEST_DURATION, 0.02, **labels)
    m.observe(HTTP_REQUEST_DURATION, 3.0, **labels)
    samples = families(m)["staticipd_http_request_duration_seconds"]["samples"]
    key = tuple(sorted(labels.items()))
    assert samples[("staticipd_http_request_duration_seconds_count", key)] == 2
    assert samples[("staticipd_http_request_duration_seconds_sum", key)] == pytest.approx(3.02)
    bucket = "staticipd_http_request_duration_seconds_bucket"
    assert samples[(bucket, tuple(sorted({**labels, "le": "0.01"}.items())))] == 0
    assert samples[(bucket, tuple(sorted({**labels, "le": "0.025"}.items())))] == 1
    assert samples[(bucket, tuple(sorted({**labels, "le": "+Inf"}.items())))] == 2


def test_every_counter_is_exposed_from_the_start_and_a_gauge_once_it_has_a_reader() -> None:
    """A scraper sees every counter and histogram (at no samples yet), and no gauge nothing
    computes; no `_created` series."""
    text = Metrics().render().decode()
    for metric in DECLARED:
        assert (f"# TYPE {metric.name} {metric.kind}" in text) == (not isinstance(metric, Gauge))
    assert "staticipd_accounts" not in text
    assert "_created" not in text


def test_the_process_platform_and_gc_collectors_are_registered() -> None:
    """The library's process, Python platform and garbage-collector metrics are exposed."""
    names = set(families(Metrics()))
    assert {"python_info", "python_gc_objects_collected", "process_cpu_seconds"} <= names
    assert "python_info" not in set(families(Metrics(process_collectors=False)))


def test_two_daemons_in_one_process_count_apart() -> None:
    """Each Metrics has its own registry: one daemon's counts never show on another's."""
    a, b = Metrics(), Metrics()
    a.inc(TIMERS_FIRED)
    assert (a.value(TIMERS_FIRED), b.value(TIMERS_FIRED)) == (1, 0)


def test_a_label_the_counter_does_not_declare_is_refused() -> None:
    """A misspelt or missing label raises instead of starting a series nobody scrapes."""
    m = Metrics()
    with pytest.raises(ValueError, match="staticipd_events_appended_total"):
        m.inc(EVENTS_APPENDED, sourse="webhook")
    with pytest.raises(ValueError, match="staticipd_timers_fired_total"):
        m.inc(TIMERS_FIRED, source="timer")
    with pytest.raises(ValueError, match="staticipd_http_request_duration_seconds"):
        m.observe(HTTP_REQUEST_DURATION, 1.0, route="/")
    assert "staticipd_events_appended_total{" not in m.render().decode()


def test_a_gauge_that_is_not_registered_cannot_be_read() -> None:
    """Attaching a reader to a gauge the registry does not hold is an error, not a new series."""
    with pytest.raises(ValueError, match="not_here"):
        Metrics().read(Gauge("not_here", "n"), lambda: [({}, 1.0)])


def test_label_values_are_escaped() -> None:
    """Quotes and newlines in label values cannot break the exposition format."""
    c = Counter("c_total", "c", ("route",))
    m = Metrics([c], process_collectors=False)
    m.inc(c, route='a"b\nc')
    assert 'c_total{route="a\\"b\\nc"} 1.0' in m.render().decode()
    assert families(m)["c"]["samples"] == {("c_total", (("route", 'a"b\nc'),)): 1.0}


def test_readme_lists_every_metric_with_its_labels_and_kind() -> None:
    """README's metrics paragraph names exactly the metrics the daemon exposes, with labels."""
    paragraph = README.split("**Metrics**", 1)[1].split("\n\n", 1)[0]
    counters, rest = paragraph.split("histograms:", 1)
    histograms, gauges = rest.split("gauges read from the projection", 1)
    for part, kind in ((counters, Counter), (histograms, Histogram), (gauges, Gauge)):
        listed = {
            name: tuple(label.split("=")[0] for label in labels.split(",") if label)
            for name, labels in re.findall(r"`(staticipd_\w+)(?:\{([^}]*)\})?`", part)
        }
        declared = {m.name: m.labels for m in DECLARED if isinstance(m, kind)}
        assert listed == declared


@pytest.mark.anyio
async def test_the_route_label_is_the_path_template_never_the_url(running) -> None:
    """`staticipd_http_request_duration_seconds{route}` is the route's template: an account's
    id does not make a series, a path no route serves is `unmatched`, and a served path asked
    with another method (405) is named by its route."""
    token = running.setup.secret("operator_token")
    auth = {"Authorization": f"Bearer {token}"}
    for method, path in [
        ("GET", "/v1/accounts/acc-secret-1"),
        ("GET", "/v1/accounts/acc-secret-2"),
        ("GET", "/no/such/path-secret-3"),
        ("PUT", "/healthz"),
    ]:
        async with running.http.request(method, path, headers=auth) as resp:
            await resp.read()
    async with running.http.get("/metrics") as resp:
        text = await resp.text()
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "staticipd_http_request_duration_seconds"
    ]
    labels = {
        (s.labels["method"], s.labels["route"], s.labels["status"])
        for s in family.samples
        if s.name.endswith("_count")
    }
    assert not any("secret" in route for _, route, _ in labels)
    assert ("GET", "/v1/accounts/{account_id}", "404") in labels
    assert ("GET", "unmatched", "404") in labels
    assert ("PUT", "/healthz", "405") in labels


_SMALL = Histogram("t_sizes", "Sizes.", ("kind",), (1, 2.5, 10))
_HITS = Counter("t_hits_total", "Hits.", ("kind",))
_PLAIN = Counter("t_plain", "Unlabelled.")
_steps = st.lists(
    st.tuples(
        st.sampled_from(["hit", "plain", "size"]),
        st.sampled_from(["a", "b", 'q"\\\n']),  # label values the text format must escape
        st.one_of(
            st.integers(0, 20).map(float), st.floats(0, 20, allow_nan=False), st.just(math.nan)
        ),
    ),
    max_size=40,
)


@given(_steps)
def test_counts_and_observations_render_as_the_librarys_own_metrics(steps) -> None:
    """For every sequence of increments and observations (bucket edges and NaN included), `/metrics`
    says what the Prometheus client's own Counter and Histogram would have said."""
    ours = Metrics((_HITS, _PLAIN, _SMALL), process_collectors=False)
    registry = prometheus_client.CollectorRegistry()
    hits = prometheus_client.Counter("t_hits_total", "Hits.", ("kind",), registry=registry)
    plain = prometheus_client.Counter("t_plain", "Unlabelled.", registry=registry)
    sizes = prometheus_client.Histogram(
        "t_sizes", "Sizes.", ("kind",), registry=registry, buckets=(1, 2.5, 10)
    )
    for what, kind, amount in steps:
        if what == "hit":
            ours.inc(_HITS, amount, kind=kind)
            hits.labels(kind=kind).inc(amount)
        elif what == "plain":
            ours.inc(_PLAIN, amount)
            plain.inc(amount)
        else:
            ours.observe(_SMALL, amount, kind=kind)
            sizes.labels(kind=kind).observe(amount)
    assert ours.render() == prometheus_client.generate_latest(registry)


def test_a_counter_refuses_to_go_down() -> None:
    m = Metrics(process_collectors=False)
    with pytest.raises(ValueError, match="only goes up"):
        m.inc(EVENTS_APPENDED, -1, source="webhook")
    assert m.value(EVENTS_APPENDED, source="webhook") == 0
