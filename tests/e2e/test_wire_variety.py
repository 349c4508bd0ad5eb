"""The migration against the provider's real variety of webhooks: compressed deliveries and
batches that mix in deltas about messages and calendars, end to end over loopback."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(60)]


async def test_compressed_mixed_batches_still_complete_the_migration(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """gzip-compressed, batched deliveries carrying message and calendar deltas end every
    account static or stalled as usual; the other objects are skipped, nothing quarantined."""
    async with e2e.running(tmp_path, accounts=30, policy="mixed", seed=21) as run:
        settings = run.sandbox.settings
        settings.webhook_content_encoding = "gzip"
        settings.other_object_deltas = 0.5
        settings.batch_probability = 0.5
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)
            outcome = await e2e.finish(run, timeout=40)
        stats = run.sandbox.sender.stats
        attempts = run.sandbox.sender.attempts
    assert stats.compressed > 0
    assert stats.other_deltas > 0
    # Every compressed delivery was accepted at its first attempt: no 401, no 400, no 500.
    assert {a.status for a in attempts} == {200}
    assert outcome.of_type("InputQuarantined") == []
    recorded = outcome.of_type("ProviderNotificationRecorded")
    assert {d["details"]["object"] for _, d in recorded} == {"account"}
    assert outcome.check_notifications_once() > 0
