"""Leadership of a PostgreSQL log: one lock holder at a time, the lock handed over when its
session ends (closed, terminated, or silent past the lease), and the fence that keeps a store
without the lock from committing anything.

They use the throwaway server of tests/conftest.py and are skipped, saying why, without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg
import pytest

from eventstore import EventStore, NewEvent, NotLeader
from eventstore.postgres import PostgresStore
from eventstore.postgres.leadership import Leadership, LeadershipLost

pytestmark = pytest.mark.anyio

LEASE = 1.0


@asynccontextmanager
async def leading(
    url: str, lease: float = LEASE
) -> AsyncIterator[tuple[PostgresStore, Leadership]]:
    """A store taking part in leadership (not yet leading), closed with its lock session."""
    store = await EventStore.open(url)
    assert isinstance(store, PostgresStore)
    try:
        lead = await store.lead(lease)
        try:
            yield store, lead
        finally:
            await lead.close()
    finally:
        await store.close()


async def terminate(url: str, pid: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


async def test_exactly_one_contender_leads_and_the_other_takes_over_when_it_closes(
    pg_url: str,
) -> None:
    """Of two processes on one log only one holds the leader lock; when the leader's lock
    session closes, the other gets it."""
    async with leading(pg_url) as (_a, lead_a), leading(pg_url) as (_b, lead_b):
        assert await lead_a.try_acquire()
        assert not await lead_b.try_acquire()
        assert not await lead_b.try_acquire()
        await lead_a.close()
        with anyio.fail_after(10):
            await lead_b.acquire()
        assert lead_b.held


async def test_a_terminated_lock_session_hands_over_and_the_old_holder_knows(pg_url: str) -> None:
    """pg_terminate_backend of the leader's lock session frees the lock for the standby, and
    the old leader's `hold` ends with LeadershipLost: it cannot get the lock back."""
    async with leading(pg_url) as (_a, lead_a), leading(pg_url) as (_b, lead_b):
        await lead_a.acquire()
        assert lead_a.lock_pid is not None
        await terminate(pg_url, lead_a.lock_pid)
        with anyio.fail_after(10):
            await lead_b.acquire()
            with pytest.raises(LeadershipLost):
                await lead_a.hold(lambda: 0)
        assert lead_a.lost


async def test_a_silent_holder_loses_the_lock_after_the_lease(pg_url: str) -> None:
    """A holder that sends nothing (a paused process) loses the lock once the lease has passed
    without a statement: the server ends its session and the standby takes the lock."""
    async with leading(pg_url) as (_a, lead_a), leading(pg_url) as (_b, lead_b):
        await lead_a.acquire()  # and never `hold()`: no heartbeat
        assert not await lead_b.try_acquire()
        with anyio.fail_after(15):
            await lead_b.acquire()


async def lose_the_lock(
    pg_url: str, store: EventStore, lead: Leadership, *, committed: str, refused: str
) -> None:
    """Lead and commit `committed`; then the lock session is terminated, and the next append,
    `refused`, gets NotLeader."""
    await lead.acquire()
    await store.append([NewEvent("s", "T", b"{}", event_id=committed)])
    assert lead.lock_pid is not None
    await terminate(pg_url, lead.lock_pid)
    with pytest.raises(NotLeader):
        await store.append([NewEvent("s", "T", b"{}", event_id=refused)])


async def test_a_fenced_store_commits_nothing(pg_url: str) -> None:
    """A store whose lock session was terminated gets NotLeader for its next append and
    snapshot, and nothing of them is in the log; while it held the lock it committed."""
    async with leading(pg_url) as (store, lead):
        await lose_the_lock(pg_url, store, lead, committed="held", refused="fenced-1")
        with pytest.raises(NotLeader):
            await store.save_snapshot("projection", 1, b"x")
    async with EventStore.open(pg_url, readonly=True) as reader:
        assert [e.event_id async for e in reader.read_all()] == ["held"]
        assert await reader.load_snapshot("projection") is None


async def test_a_leader_gets_its_lock_back_when_nobody_else_wrote(pg_url: str) -> None:
    """A leader whose lock session ended (a server restart, a terminated session) gets the
    lock back on a new session and commits again, when the log's head is still its own."""
    async with leading(pg_url) as (store, lead):
        await lose_the_lock(pg_url, store, lead, committed="before", refused="refused")
        async with anyio.create_task_group() as tg:
            tg.start_soon(lead.hold, lambda: 1)
            with anyio.fail_after(10):
                while not lead.reclaimed:
                    await anyio.sleep(0.05)
            await store.append([NewEvent("s", "T", b"{}", event_id="after")])
            tg.cancel_scope.cancel()
        assert not lead.lost
    async with EventStore.open(pg_url, readonly=True) as reader:
        assert [e.event_id async for e in reader.read_all()] == ["before", "after"]


async def test_a_leader_whose_log_moved_on_gives_up(pg_url: str) -> None:
    """A leader whose lock session ended, and whose log another process wrote to meanwhile,
    does not lead on: `hold` raises LeadershipLost and it commits nothing more."""
    async with leading(pg_url) as (store, lead):
        await lead.acquire()
        assert lead.lock_pid is not None
        await terminate(pg_url, lead.lock_pid)
        async with EventStore.open(pg_url) as other:  # a leader meanwhile, gone again
            await other.append([NewEvent("t", "T", b"{}", event_id="other")])
        with anyio.fail_after(10), pytest.raises(LeadershipLost):
            await lead.hold(lambda: 0)
        assert lead.lost
        with pytest.raises(NotLeader):
            await store.append([NewEvent("s", "T", b"{}", event_id="stale")])


async def test_a_standby_store_cannot_commit_and_another_leader_can(pg_url: str) -> None:
    """A store taking part in leadership that has not got the lock refuses to commit
    (NotLeader), while the holder commits; a plain store (the log commands) is not fenced."""
    async with leading(pg_url) as (a, lead_a), leading(pg_url) as (b, lead_b):
        await lead_a.acquire()
        assert not await lead_b.try_acquire()
        with pytest.raises(NotLeader):
            await b.append([NewEvent("s", "T", b"{}", event_id="from-standby")])
        assert not lead_b.lost  # a standby refused is still a standby
        await a.append([NewEvent("s", "T", b"{}", event_id="from-leader")])
        async with EventStore.open(pg_url) as plain:
            await plain.append([NewEvent("t", "T", b"{}", event_id="unfenced")])
    async with EventStore.open(pg_url, readonly=True) as reader:
        assert [e.event_id async for e in reader.read_all()] == ["from-leader", "unfenced"]


async def test_a_commit_notifies_the_listeners_with_its_head(pg_url: str) -> None:
    """Another process's commit wakes a listener on the log, which hears the new head."""
    async with EventStore.open(pg_url) as writer, EventStore.open(pg_url) as follower:
        assert isinstance(follower, PostgresStore)
        notices = follower.commit_notices()
        try:
            await notices.wait(0.1)  # connects and listens
            await writer.append([NewEvent("s", "T", b"{}"), NewEvent("s", "T", b"{}")])
            with anyio.fail_after(10):
                while notices.last_position < 2:
                    await notices.wait(5)
            assert notices.last_position == 2
        finally:
            await notices.close()
