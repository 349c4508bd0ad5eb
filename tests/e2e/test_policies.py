"""The full migration on the sandbox provider under each second-step policy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from daemon.provider.sandbox.settings import ACTION_BODIES
from daemon.runtime import audit

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.mark.parametrize("policy", ["notify", "restart", "mixed"])
async def test_every_account_ends_static_or_stalled(
    e2e: SimpleNamespace, tmp_path: Path, policy: str
) -> None:
    """Every account ends static, or stalled with the reason when its user never answers."""
    async with e2e.running(tmp_path, accounts=40, policy=policy, seed=3) as run:
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=35)
    states = list(outcome.states.values())
    if policy == "restart":
        assert states.count("static") == 40
    else:
        # The seed gives some users who never answer: the stalled path is exercised too.
        assert states.count("stalled") >= 1
    assert states.count("static") >= 20
    # Without faults the provider's running webhook ends each move (on arrival, or at the second
    # auth it raced); the reconciler (an hour apart by default) is never needed, even
    # though webhook dates have whole seconds only.
    static_sources = Counter(
        e.source
        for account_id, state in outcome.states.items()
        if state == "static"
        for e in audit.transitions(outcome.timeline(account_id))
        if e.state_after == "static"
    )
    assert set(static_sources) <= {"webhook", "auth-event"}, static_sources


async def test_restarts_complete_whatever_body_the_provider_answers(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """Under `restart`, downgrade/upgrade answered with every body variant in turn (an empty or
    unreadable body too) and capped account-list pages: every account ends static, each
    restart downgraded once, its downgrade recorded before its success."""
    async with e2e.running(tmp_path, accounts=24, policy="restart", seed=5) as run:
        run.sandbox.settings.action_bodies = ACTION_BODIES
        run.sandbox.settings.page_cap = 5
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=35)
        used = dict(run.sandbox.action_bodies)
    assert list(outcome.states.values()).count("static") == 24
    assert set(used) == set(ACTION_BODIES), used
    steps: dict[str, list[str]] = {}
    for record, data in outcome.of_type("EffectProgressed", "EffectSucceeded"):
        if data["idempotency_key"].split(":")[1] == "restart":
            steps.setdefault(data["idempotency_key"], []).append(record.type)
    assert steps, "no restart was recorded"
    assert all(chain == ["EffectProgressed", "EffectSucceeded"] for chain in steps.values())
    details = " ".join(d["detail"] for _, d in outcome.of_type("EffectProgressed"))
    details += " ".join(d["detail"] for _, d in outcome.of_type("EffectSucceeded"))
    assert "empty body" in details
    assert "body unreadable" in details
