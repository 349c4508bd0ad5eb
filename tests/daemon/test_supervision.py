"""The daemon never runs half-alive: a part that ends takes the whole process down."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.config import load_config, load_secrets
from daemon.domain import ProviderNotified
from daemon.runtime.planner import PassPlanner
from daemon.service import Daemon
from eventstore import EventStoreError, NewEvent
from eventstore.writer import Writer

pytestmark = pytest.mark.anyio


def daemon_for(setup: Any) -> Daemon:
    config = load_config(None, setup.env)
    return Daemon(config, load_secrets(config, setup.env), reload=lambda: None)


async def run_until_it_fails(daemon: Daemon, crash: Any) -> BaseExceptionGroup[Any]:
    """Run the daemon, call `crash` once it is ready, and return how the run failed."""
    with anyio.fail_after(20):
        with pytest.raises(BaseExceptionGroup) as failure:  # noqa: PT012
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await daemon.ready.wait()
                tg.start_soon(crash)
                await anyio.sleep(15)  # never reached: the group fails first
    return failure.value


async def test_a_dead_store_writer_stops_the_daemon(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the event store's writer crashes, Daemon.run fails and the log names the writer."""
    daemon = daemon_for(setup)

    async def broken(self: Writer, batch: Any) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(Writer, "_write_batch", broken)

    async def write() -> None:
        with contextlib.suppress(EventStoreError):  # the append is answered: the store closed
            await daemon.store.append([NewEvent(stream="s", type="Happened", data=b"{}")])

    with capture_logs() as logs:
        failure = await run_until_it_fails(daemon, write)
    assert "a bug in the writer" in repr(failure.exceptions)
    failed = [e for e in logs if e["event"] == "daemon.part_failed"]
    assert [e["part"] for e in failed] == ["store writer"]


async def test_a_dead_engine_stops_the_daemon(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the engine crashes, Daemon.run fails and the log names the engine."""
    daemon = daemon_for(setup)

    def broken(self: PassPlanner[Any], dropped: Any = None) -> Any:
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(PassPlanner, "take", broken)

    async def submit() -> None:
        notified = ProviderNotified(
            input_id="v2:1",
            account_id="acc-1",
            trigger="account.running",
            occurred_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        )
        with contextlib.suppress(EventStoreError):  # answered: the engine stopped
            await daemon.engine.submit([notified], source="test")

    with capture_logs() as logs:
        failure = await run_until_it_fails(daemon, submit)
    assert "a bug in the engine" in repr(failure.exceptions)
    failed = [e for e in logs if e["event"] == "daemon.part_failed"]
    assert [e["part"] for e in failed] == ["engine"]
