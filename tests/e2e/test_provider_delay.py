"""The migration when the provider's own move delay is longer than the daemon's `delay`.

The provider ignores a second step that comes too early for it, so the daemon's first second
step does not move many accounts: they must not wait in `second_auth` forever.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from daemon.cli.demo import DELAY
from daemon.domain import AccountState
from daemon.runtime.pollers import _informative

# 1.5 times the daemon's delay: every restart at the due time, and most quick answers, are early.
PROVIDER_DELAY = 1.5 * DELAY


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_every_account_ends_static_when_the_provider_waits_longer(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """A provider slower than our delay ignores early second steps; each is asked again and ends."""
    async with e2e.running(tmp_path, accounts=40, policy="mixed", seed=3) as run:
        run.sandbox.settings.move_delay = PROVIDER_DELAY
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=38)
        provider_outcomes = dict(run.sandbox.outcomes)
    # The provider really ignored second steps (a user's early answer or an early restart).
    ignored = sum(n for k, n in provider_outcomes.items() if "early_ignored" in k)
    assert ignored > 0, provider_outcomes
    # `finish` checked: static, or stalled exactly for silent notify users; verify passes;
    # replay equals live; timers fire once; one intent per effect key.
    states = list(outcome.states.values())
    assert states.count("static") >= 30, states
    retried = set()
    for account_id in outcome.states:
        for e in outcome.timeline(account_id):
            data = e.data
            if e.type == "StateChanged" and (data["from_state"], data["to_state"]) == (
                "second_auth",
                "second_step_due",
            ):
                retried.add(account_id)
                assert "the move did not happen" in data["reason"]
    assert retried, "no second step was requested again"
    for account_id in retried:
        assert outcome.states[account_id] == "static", account_id
        types = [e.type for e in outcome.timeline(account_id)]
        # The running-grace check found the account still stopped before the retry.
        assert "ProviderCheckRequested" in types
        requests = [
            e.data
            for e in outcome.timeline(account_id)
            if e.type in ("ReauthRequested", "SyncRestartRequested")
        ]
        numbers = [r["reminder"] for r in requests]
        assert numbers == sorted(set(numbers)), numbers  # numbering continues, never resets
    # Under the restart policy the first restart, at our due time, is too early for this
    # provider (unless the machine delayed it by half the delay): most are retried.
    restart_accounts = {a for a, p in outcome.policies.items() if p == "restart"}
    assert len(restart_accounts & retried) >= len(restart_accounts) // 2, (
        len(restart_accounts & retried),
        len(restart_accounts),
    )


def test_reconciler_reports_stopped_for_accounts_waiting_after_the_second_step() -> None:
    """The reconciler records a stopped account in second_auth, so a failed move is noticed."""

    def account(state: str, *flags: str) -> AccountState:
        return AccountState(account_id="a", state=state, flags=frozenset(flags))

    assert _informative(account("second_auth"), "stopped", True)
    assert _informative(account("second_auth"), "running", True)
    assert not _informative(account("stopped_waiting"), "stopped", True)
    assert not _informative(account("static"), "stopped", True)


def test_reconciler_does_not_repeat_what_is_already_flagged() -> None:
    """A broken or vanished account is recorded once, not again at every reconciler round."""
    fresh = AccountState(account_id="a", state="second_step_due")
    flagged = AccountState(account_id="a", state="second_step_due", flags=frozenset({"invalid"}))
    gone = AccountState(account_id="a", state="second_step_due", flags=frozenset({"deleted"}))
    assert _informative(fresh, "invalid", True)
    assert not _informative(flagged, "invalid", True)
    assert _informative(flagged, "sync-error", True)
    assert _informative(fresh, None, False)
    assert not _informative(gone, None, False)
