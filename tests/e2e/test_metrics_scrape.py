"""`/metrics` of a real daemon after a migration on the sandbox provider: what an operator graphs.

The daemon's own listener is scraped over loopback and parsed with the Prometheus client's parser;
every metric the daemon declares is there, with bounded labels and counts that moved.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import DECLARED, Gauge

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(60)]

ROUTES = {
    "/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/webhooks/nylas",
    "/v1/auth-events", "/v1/summary", "/v1/accounts", "/v1/accounts/{account_id}",
    "/v1/accounts/{account_id}/timeline", "/v1/migration/enable", "/v1/enrollments",
    "/v1/accounts/{account_id}/{command}", "/v1/ip-addresses", "unmatched",
}  # fmt: skip
EFFECTS = {"ReauthRequested", "SyncRestartRequested", "ProviderCheckRequested", "AppNotified"}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and sample name -> [(labels, value)]."""
    types: dict[str, str] = {}
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return types, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for have, v in samples[name] if all(have.get(k) == want for k, want in labels.items())
    )


async def test_a_scrape_after_a_migration_shows_every_metric_moving(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """After a mixed-policy migration, every declared metric is exposed with bounded labels:
    requests per route template, commits, timers, effects, provider calls and IP-list changes."""
    async with e2e.running(tmp_path, accounts=8, policy="mixed", seed=3) as run:
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            await run.wait_done(35)
        await run.wait_quiet()
        async with aiohttp.ClientSession(base_url=run.url) as http:
            async with http.post("/webhooks/nylas", data=b"{}") as resp:
                assert resp.status == 401  # unsigned
            async with http.get("/no/such/page/12345") as resp:
                assert resp.status == 404
            position = run.daemon.live.position
            async with http.get("/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=")
                types, samples = parse(await resp.text())

    for metric in DECLARED:
        family = metric.name.removesuffix("_total")
        assert types.get(family) == metric.kind, metric.name
        if not isinstance(metric, Gauge):
            moved = samples[f"{family}_count" if metric.kind == "histogram" else metric.name]
            assert any(value > 0 for _, value in moved), f"{metric.name} never moved"
    assert {"process_cpu_seconds", "python_gc_objects_collected", "python_info"} <= set(types)

    # Requests: by path template and status, never by the URL asked for.
    requests = "staticipd_http_request_duration_seconds_count"
    seen_routes = {labels["route"] for labels, _ in samples[requests]}
    assert seen_routes <= ROUTES, seen_routes - ROUTES
    assert total(samples, requests, route="/v1/enrollments", method="POST", status="201") >= 1
    assert total(samples, requests, route="/webhooks/nylas", method="POST", status="200") >= 1
    assert total(samples, requests, route="/webhooks/nylas", method="POST", status="401") == 1
    assert total(samples, requests, route="unmatched", method="GET", status="404") == 1

    # The log: every event this daemon applied was written by a commit it observed.
    assert total(samples, "staticipd_log_commit_duration_seconds_count") >= 1
    assert total(samples, "staticipd_log_commit_duration_seconds_sum") > 0
    assert total(samples, "staticipd_log_batch_events_sum") >= position > 0

    # Timers: one lateness per timer fired.
    fired = total(samples, "staticipd_timers_fired_total")
    assert fired >= 1
    assert total(samples, "staticipd_timer_lateness_seconds_count") == fired

    # Effects: attempts timed by effect and result; settled effects counted by attempts taken.
    durations = samples["staticipd_effect_duration_seconds_count"]
    assert {labels["effect"] for labels, _ in durations} <= EFFECTS
    assert {labels["result"] for labels, _ in durations} <= {"ok", "error"}
    assert total(samples, "staticipd_effect_duration_seconds_count", result="ok") >= 1
    settled = samples["staticipd_effect_attempts_count"]
    assert {labels["outcome"] for labels, _ in settled} <= {"succeeded", "gave_up"}
    assert total(samples, "staticipd_effect_attempts_count", outcome="succeeded") >= 1

    # The provider's API: calls by operation and status, timed by operation.
    calls = samples["staticipd_provider_requests_total"]
    operations = {labels["operation"] for labels, _ in calls}
    assert {"downgrade", "upgrade", "ip_addresses_dynamic"} <= operations
    assert all(s == "error" or s.isdigit() for s in {labels["status"] for labels, _ in calls})
    for operation in operations:
        assert total(
            samples, "staticipd_provider_request_duration_seconds_count", operation=operation
        ) == total(samples, "staticipd_provider_requests_total", operation=operation)

    # The IP-list watcher's first look at the dynamic list is a change.
    assert total(samples, "staticipd_ip_list_changes_total", kind="dynamic") >= 1
