"""The status page `/`, `/v1/summary`'s per-wave progress, and the wave an enrolled account shows.

Real daemon on 127.0.0.1 (see `conftest.py`); what a browser makes of the page is checked in
tests/e2e/test_status_page.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.domain import STATES

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def enable_and_enroll(d: Any, ids: list[str], wave: str, policy: str) -> None:
    status, _ = await d.operator("POST", "/v1/migration/enable", {"reason": "test"})
    assert status == 200
    body = {"account_ids": ids, "wave": wave, "policy": policy}
    status, answer = await d.operator("POST", "/v1/enrollments", body)
    assert status == 201, answer


async def page(d: Any) -> str:
    async with d.http.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        return await resp.text()


async def test_enrolled_account_shows_its_wave_and_policy_before_its_first_auth(running) -> None:
    """From its enrolment on, an account reads its wave and policy, alone and in `?wave=`."""
    await enable_and_enroll(running, ["acc-1", "acc-2"], "wave-a", "restart")
    status, account = await running.operator("GET", "/v1/accounts/acc-1")
    assert status == 200
    assert (account["state"], account["wave"], account["policy"]) == (
        "dynamic",
        "wave-a",
        "restart",
    )
    _, listing = await running.operator("GET", "/v1/accounts?wave=wave-a")
    assert [(a["account_id"], a["wave"], a["policy"]) for a in listing["accounts"]] == [
        ("acc-1", "wave-a", "restart"),
        ("acc-2", "wave-a", "restart"),
    ]
    # Enrolled again elsewhere before it started: it shows the new wave.
    body = {"account_ids": ["acc-2"], "wave": "wave-b", "policy": "notify"}
    status, _ = await running.operator("POST", "/v1/enrollments", body)
    assert status == 201
    _, account = await running.operator("GET", "/v1/accounts/acc-2")
    assert (account["wave"], account["policy"]) == ("wave-b", "notify")
    _, summary = await running.operator("GET", "/v1/summary")
    assert summary["waves"] == {"wave-a": 1, "wave-b": 1}


async def test_summary_gives_each_waves_progress_next_to_the_old_fields(running) -> None:
    """`/v1/summary` keeps `waves` (accounts per wave) and adds `wave_progress` per wave."""
    await enable_and_enroll(running, ["a1", "a2", "a3"], "w1", "notify")
    status, _ = await running.auth_event(
        {"account_id": "a1", "occurred_at": datetime.now(UTC).isoformat()}
    )
    assert status == 200
    _, summary = await running.operator("GET", "/v1/summary")
    assert summary["waves"] == {"w1": 3}
    assert set(summary) >= {"migration_enabled", "enabled_at", "funnel", "position"}
    assert summary["enabled_at"].endswith("Z")  # UTC, written as every other time of the API
    states = dict.fromkeys(STATES, 0) | {"dynamic": 2, "first_auth": 1}
    assert summary["wave_progress"] == {
        "w1": {
            "enrolled": 3,
            "waiting": 1,
            "static": 0,
            "stalled": 0,
            "states": states,
            "first_auth_to_static_seconds": {"median": None, "p90": None},
        }
    }


async def test_status_page_shows_waves_chart_next_steps_and_the_log_head(running) -> None:
    """The page has the funnel chart, a row per wave, what comes next and the log's head hash;
    wave names are escaped, and no account id or email shows."""
    await enable_and_enroll(running, ["secret-7"], "<b>wave</b>", "notify")
    await running.auth_event(
        {
            "account_id": "secret-7",
            "occurred_at": datetime.now(UTC).isoformat(),
            "email": "someone@example.com",
        }
    )
    html = await page(running)
    assert re.search(r'<path class="area" data-state="first_auth"', html)
    assert '<table class="waves" id="waves">' in html
    assert "<th>&lt;b&gt;wave&lt;/b&gt;</th><td>1</td>" in html
    assert "second steps due in the next hour" in html
    assert "reminders pending" in html
    store = running.daemon.store
    position, digest = await store.head()
    assert f"position <b>{position:,}</b>" in html
    assert digest in html
    assert "secret-7" not in html
    assert "someone@example.com" not in html
    assert 'id="sandbox"' not in html  # a real provider's page carries no sandbox banner
    assert "<script" not in html.lower()  # no JavaScript, and nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', html)


async def test_status_page_of_an_empty_log(running) -> None:
    """Before anything is enrolled the page still renders, saying so."""
    html = await page(running)
    assert "no account enrolled yet" in html
    assert "No wave enrolled yet." in html
    assert "No IP list fetched from the provider yet." in html
