"""`staticipd backup` while a migration runs, then a restore: a daemon started on the copy
resumes exactly at the copied head (state, pending timers, pending effects)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from daemon.runtime.projections import Projection
from eventstore import EventStore
from tests.daemon.test_process import free_port, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]


async def staticipd(*args: str) -> Any:
    """Run a `staticipd` command in a subprocess; its `--json` output, decoded."""
    result = await anyio.run_process([sys.executable, "-m", "daemon", *args], check=False)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


async def projection_at(database: Path, position: int) -> Projection:
    """What the log says at `position`: its records folded from the start, as replay does."""
    projection = Projection()
    async with EventStore.open(database, readonly=True) as store:
        async for record in store.read_all(1, position):
            projection.apply_record(record)
    return projection


async def test_a_backup_under_load_restores_to_the_copied_head(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    """A backup taken while users authenticate and webhooks arrive, put in place of the log of
    a new state directory, starts a daemon whose accounts, funnel, pending timers and pending
    effects are those of the head the backup printed, not those of the original log, which
    went on past it."""
    backups = tmp_path / "backups"
    backups.mkdir()
    dest = backups / "staticipd-2026-12-04.db"
    overrides = {"STATICIPD_OUTBOX__MAX_ATTEMPTS": "100"}
    async with e2e.running(
        tmp_path / "live", accounts=40, policy="mixed", seed=5, daemon_overrides=overrides
    ) as run:
        # Sync restarts stay half done (their upgrade refused), so effects are pending too.
        run.sandbox.settings.stopped_account_refuses = frozenset({"upgrade"})
        run.sandbox.settings.stopped_account_status = 503
        await run.enrol()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.users.authenticate_all)

            def midway() -> bool:
                assert run.daemon is not None
                return run.funnel().get("static", 0) >= 3 and len(run.daemon.outbox) > 0

            with anyio.fail_after(20):  # accounts done, others waiting on timers and effects
                while not midway():
                    await anyio.sleep(0.05)
            copied = await staticipd("backup", str(dest), "--database", str(run.database), "--json")
            with anyio.fail_after(20):  # the migration goes on past the copied head
                while run.daemon.live.position <= copied["head_position"]:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        await run.stop_daemon()
    head, digest = copied["head_position"], copied["head_hash"]
    assert copied["ok"] is True
    assert copied["expect"] == f"{head}:{digest}"
    original = await staticipd("replay", "--database", str(run.database), "--position", str(head),
                               "--json")  # fmt: skip
    expected = await projection_at(run.database, head)
    assert expected.pending_timers()
    assert expected.pending_effects()
    async with EventStore.open(run.database, readonly=True) as store:
        assert (await store.head())[0] > head
        assert [r.hash async for r in store.read_all(head, head)] == [digest]

    # Restore: the copy in place of the log of a new state directory, no -wal/-shm beside it.
    state = tmp_path / "restored"
    state.mkdir()
    shutil.copyfile(dest, state / "staticipd.db")
    port = free_port()
    env = {
        "STATICIPD_DATABASE": str(state / "staticipd.db"),
        "STATICIPD_LISTEN": f"127.0.0.1:{port}",
        "STATICIPD_LOGGING__FORMAT": "json",
    }
    with spawn(env, state, port) as child:
        ready = child.wait_for_log("daemon.ready")
        assert child.stop() == 0
    assert ready["position"] == head
    assert ready["accounts"] == original["accounts"] == len(expected)
    assert ready["pending_timers"] == len(expected.pending_timers())
    assert ready["pending_effects"] == len(expected.pending_effects())
    restored = await staticipd("replay", "--database", str(state / "staticipd.db"),
                               "--position", str(head), "--json")  # fmt: skip
    assert restored["funnel"] == original["funnel"]
    # The restored log is the copy plus what its daemon wrote: the copied head is still there.
    await staticipd("verify", "--database", str(state / "staticipd.db"),
                    "--expect", copied["expect"], "--json")  # fmt: skip
