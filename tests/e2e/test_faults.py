"""The migration on a misbehaving provider: webhooks duplicated, reordered, dropped and badly
signed, and management-API calls answered 429 and 5xx."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(60)]


async def test_webhook_faults_do_not_change_the_outcome(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Duplicated, reordered, dropped and badly signed webhooks still end static/stalled."""
    async with e2e.running(tmp_path, accounts=40, policy="mixed", seed=5) as run:
        run.sandbox.set_faults(
            webhook_duplicate=0.3,
            webhook_reorder=0.2,
            webhook_drop=0.25,
            webhook_bad_signature=0.2,
            webhook_delay_range=(20.0, 200.0),
        )
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=40)
        stats = run.sandbox.sender.stats
        attempts = run.sandbox.sender.attempts
    # The faults really happened.
    assert stats.duplicated > 0
    assert stats.reordered > 0
    assert stats.dropped > 0
    assert stats.bad_signatures > 0
    # A bad signature is refused (401) and the sandbox's retry with the right one is accepted.
    assert any(a.bad_signature and a.status == 401 for a in attempts)
    bad = {a.delivery_id for a in attempts if a.bad_signature}
    assert all(any(a.delivery_id == d and a.ok for a in attempts) for d in bad)
    # Duplicates reached the daemon and were acknowledged, yet each delta is in the log once.
    delivered = Counter(a.delivery_id for a in attempts if a.ok)
    assert max(delivered.values()) >= 2
    assert outcome.check_notifications_once() > 0
    # Stops whose webhook was dropped were observed by the reconciler or the provider check.
    stop_sources = Counter(
        e.source
        for account_id in outcome.states
        for e in outcome.timeline(account_id)
        if e.type == "StateChanged" and e.state_after == "stopped_waiting"
    )
    assert stop_sources["webhook"] > 0
    assert sum(n for s, n in stop_sources.items() if s != "webhook") > 0, stop_sources


async def test_provider_api_429_and_5xx_during_restarts(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Restarts answered 429 or 503 are retried with the same key until every account is static."""
    async with e2e.running(tmp_path, accounts=40, policy="restart", seed=9) as run:
        run.sandbox.set_faults(api_429=0.3, api_5xx=0.3)
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=40)
        api_faults = dict(run.sandbox.api_faults)
    assert api_faults["429"] > 0
    assert api_faults["5xx"] > 0
    assert set(outcome.states.values()) == {"static"}
    failed = outcome.of_type("EffectAttemptFailed")
    restart_failures = [d for _, d in failed if ":restart:" in d["idempotency_key"]]
    assert restart_failures, "no restart attempt met an injected fault"
    # Each failed restart was retried under its key and eventually succeeded.
    succeeded = {d["idempotency_key"] for _, d in outcome.of_type("EffectSucceeded")}
    assert {d["idempotency_key"] for d in restart_failures} <= succeeded
