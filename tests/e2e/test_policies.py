"""The full migration on the sandbox provider under each second-step policy."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

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
