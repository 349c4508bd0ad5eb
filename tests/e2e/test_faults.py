"""The migration on a misbehaving provider: webhooks duplicated, reordered, dropped and badly
signed, management-API calls answered 429 and 5xx, and accounts going invalid mid-way."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import cycle
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from daemon.provider.sandbox import BreakKind
from daemon.runtime import audit
from daemon.runtime.audit import TimelineEntry

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


# Six calls in ten refused, each retried after about a second: about 30 s on a quiet machine.
@pytest.mark.timeout(120)
async def test_provider_api_429_and_5xx_during_restarts(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Restarts answered 429 or 503 are retried with the same key until every account is static."""
    async with e2e.running(tmp_path, accounts=40, policy="restart", seed=9) as run:
        run.sandbox.set_faults(api_429=0.3, api_5xx=0.3)
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=90)
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


def _repaired_by(entry: TimelineEntry) -> str:
    """Who recorded a transition: the reconciler's inputs are the ones with `reconcile:` ids."""
    return "reconciler" if entry.event_id.startswith("reconcile:") else entry.source


async def test_dropped_stops_and_runnings_are_repaired_by_the_reconciler(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """With the grace-period checks out of reach, only the reconciler repairs dropped webhooks."""
    # Graces far beyond the run: the provider checks after them can never fire first.
    overrides = {
        "STATICIPD_MIGRATION__STOP_GRACE_SECONDS": "3600",
        "STATICIPD_MIGRATION__RUNNING_GRACE_SECONDS": "3600",
    }
    async with e2e.running(
        tmp_path, accounts=40, policy="mixed", seed=23, daemon_overrides=overrides
    ) as run:
        run.sandbox.set_faults(webhook_drop=0.35)
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=40)
        assert run.sandbox.sender.stats.dropped > 0
    assert not outcome.of_type("ProviderCheckRequested"), "a grace-period check fired"
    repaired: Counter[str] = Counter()
    for account_id in outcome.states:
        entries = outcome.timeline(account_id)
        for trigger, state in (
            ("account.stopped", "stopped_waiting"),
            ("account.running", "static"),
        ):
            moved = [e for e in entries if e.type == "StateChanged" and e.state_after == state]
            if not moved:
                continue
            heard = any(
                e.type == "ProviderNotificationRecorded" and e.data["trigger"] == trigger
                for e in entries
            )
            if heard:
                continue
            # Its webhook was dropped: the fact that moved the account is a reconciler
            # observation recorded no later than the move.
            seen = [
                e
                for e in entries
                if e.type == "AccountObservationRecorded"
                and _repaired_by(e) == "reconciler"
                and e.data["sync_state"] == trigger.removeprefix("account.")
                and e.position <= moved[0].position
            ]
            assert seen, (account_id, state, [(e.type, e.source) for e in entries])
            repaired[state] += 1
    # Both kinds of drop happened and were repaired.
    assert repaired["stopped_waiting"] > 0, repaired
    assert repaired["static"] > 0, repaired


async def test_accounts_going_invalid_mid_way_end_static_after_the_next_auth(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Accounts broken while waiting get flagged, and end static, unflagged, after a new auth."""
    broken: dict[str, BreakKind] = {}
    async with e2e.running(tmp_path, accounts=40, policy="mixed", seed=31) as run:
        await run.enrol()

        async def reauth_soon(account_id: str) -> None:
            # The user sees the broken mailbox and reconnects (a restart cannot mend it).
            await anyio.sleep(0.1)
            await run.users.authenticate(account_id)

        async def break_waiting_accounts(tg: anyio.abc.TaskGroup) -> None:
            kinds: Iterator[BreakKind] = cycle(["invalid", "sync_error"])
            per_policy: Counter[str] = Counter()
            while sum(per_policy.values()) < 8 and run.daemon is not None:
                for account_id in sorted(run.daemon.live.projection.ids_in("stopped_waiting")):
                    policy = run.policies[account_id]
                    if account_id in broken or account_id in run.users.silent:
                        continue
                    if per_policy[policy] >= 4:
                        continue
                    broken[account_id] = next(kinds)
                    run.sandbox.break_account(account_id, broken[account_id])
                    per_policy[policy] += 1
                    if policy == "restart":
                        tg.start_soon(reauth_soon, account_id)
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            tg.start_soon(break_waiting_accounts, tg)
            outcome = await e2e.finish(run, timeout=40)
        sandbox_accounts = run.sandbox.book.accounts
        assert len(broken) == 8
        assert {run.policies[a] for a in broken} == {"notify", "restart"}
        assert set(broken.values()) == {"invalid", "sync_error"}
        for account_id in broken:
            assert sandbox_accounts[account_id].broken is None
            assert sandbox_accounts[account_id].sync_state == "running"
    final = audit.replay(outcome.records)
    for account_id, kind in broken.items():
        assert outcome.states[account_id] == "static", account_id
        entries = outcome.timeline(account_id)
        raised = [
            i for i, e in enumerate(entries) if e.type == "FlagRaised" and e.data["flag"] == kind
        ]
        cleared = [
            i for i, e in enumerate(entries) if e.type == "FlagCleared" and e.data["flag"] == kind
        ]
        assert raised, (account_id, [e.type for e in entries])
        # Raised while waiting, cleared by the repairing auth or the running that followed.
        assert cleared, (account_id, [e.type for e in entries])
        assert cleared[-1] > raised[-1], (account_id, [e.type for e in entries])
        moved = next(
            i
            for i, e in enumerate(entries)
            if e.state_after == "static" and e.type == "StateChanged"
        )
        assert raised[0] < moved
        state = final.account(account_id)
        assert state is not None
        assert not state.flags & {"invalid", "sync_error"}, (account_id, state.flags)
