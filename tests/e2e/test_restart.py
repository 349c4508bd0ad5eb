"""A daemon restart in the middle of a migration, while the users keep authenticating."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(60)]


async def test_migration_survives_a_daemon_restart(e2e: SimpleNamespace, tmp_path: Path) -> None:
    """Stopping the daemon mid-way and starting a new one on the same log and port loses nothing."""
    async with e2e.running(tmp_path, accounts=40, policy="mixed", seed=21) as run:
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            # Mid-way: some accounts are done, others wait on timers and effects.
            with anyio.fail_after(20):
                while run.funnel().get("static", 0) < 5:
                    await anyio.sleep(0.05)
            first = run.daemon
            assert first is not None
            pending_timers = len(first.timers)
            old_port = first.bound_port
            await run.stop_daemon()
            cut = first.live.position
            # Away long enough for auth reports to be refused and webhooks to fail and retry.
            await anyio.sleep(0.5)
            second = await run.start_daemon()
            assert second.bound_port == old_port
            assert len(second.live.projection) == len(first.live.projection)
            outcome = await e2e.finish(run, timeout=40)
        counters = run.users.counters
    assert pending_timers > 0
    assert counters.reports_failed == 0
    assert run.daemons_started == 2
    states = list(outcome.states.values())
    assert states.count("static") + states.count("stalled") == 40
    # The restarted daemon went on where the first stopped: its log has both runs' inputs.
    sources = {e.source for a in outcome.states for e in outcome.timeline(a)}
    assert {"auth-event", "webhook", "timer", "outbox"} <= sources
    # Timers scheduled by the first daemon were fired (once) by the second.
    scheduled_before = {
        d["timer_id"] for r, d in outcome.of_type("TimerScheduled") if r.position <= cut
    }
    fired_after = {d["timer_id"] for r, d in outcome.of_type("TimerFired") if r.position > cut}
    assert scheduled_before & fired_after


async def test_a_restart_cut_between_downgrade_and_upgrade_only_upgrades_after(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Sync restarts whose downgrade was recorded but whose upgrade failed when the daemon
    stopped are finished by the next daemon with the upgrade alone: never a second downgrade,
    never an account left stopped."""
    overrides = {"STATICIPD_OUTBOX__MAX_ATTEMPTS": "100"}
    async with e2e.running(
        tmp_path, accounts=12, policy="restart", seed=8, daemon_overrides=overrides
    ) as run:
        settings = run.sandbox.settings
        settings.stopped_account_refuses = frozenset({"upgrade"})  # until the daemon restarts
        settings.stopped_account_status = 503
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)

            def downgraded() -> int:
                assert run.daemon is not None
                return sum(
                    1
                    for _, _, pending in run.daemon.live.projection.pending_effects()
                    if pending.steps == ("downgraded",)
                )

            with anyio.fail_after(20):
                while downgraded() < 12:
                    await anyio.sleep(0.05)
            first = run.daemon
            assert first is not None
            await run.stop_daemon()
            cut = first.live.position
            settings.stopped_account_refuses = frozenset()
            await run.start_daemon()
            outcome = await e2e.finish(run, timeout=40)
        answered = sum(run.sandbox.action_bodies.values())
    assert list(outcome.states.values()).count("static") == 12
    progressed = [d["idempotency_key"] for _, d in outcome.of_type("EffectProgressed")]
    assert len(progressed) == len(set(progressed)) == 12
    # One downgrade and one upgrade per account, the refused upgrades aside.
    assert answered == 24
    # Each downgrade was recorded by the first daemon, each success by the second.
    for record, data in outcome.of_type("EffectProgressed", "EffectSucceeded"):
        if ":restart:" in data["idempotency_key"]:
            assert (record.position <= cut) == (record.type == "EffectProgressed"), record.type
