"""The full migration on the sandbox provider under each second-step policy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

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
