"""Which process of an active/standby pair writes a PostgreSQL log (docs/log-format.md,
"Leadership").

The leader holds the session-level advisory lock `schema.LEADER_LOCK` on a connection of its
own, the lock session, which asks the server to end it after `lease` seconds without a
statement (`idle_session_timeout`). A contender polls `pg_try_advisory_lock` every lease/4
seconds; once it holds the lock it sends `SELECT 1` as often. So a killed leader's socket closes
and the server frees the lock at once, and a paused one (SIGSTOP, a host that stopped) loses it
`lease` seconds after its last statement.

The fence: every commit of a store that leads checks, after taking `schema.WRITE_LOCK`, that the
lock is granted to *its* lock session (`check`), and rolls back with NotLeader if not. A new
leader takes WRITE_LOCK once before it writes (`PostgresStore.wait_out_commits`), so an old
leader's commit either finished before that or finds the lock gone: two leaders never both
commit.

A leader whose lock session breaks (the server restarted, the session was terminated) commits
nothing meanwhile and tries to get the lock back on a new session: it leads on only if it gets
it and the log's head is still the last position it knows (nobody else wrote); otherwise the
leadership is lost for good in this process (`hold` raises LeadershipLost).

The channel `schema.NOTIFY_CHANNEL` carries each commit's head position; `CommitNotices` is a
standby's ear on it. Domain-free, like the rest of eventstore/.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg

from ..errors import NotLeader, StorageUnavailable
from .errors import translate_pg
from .schema import LEADER_LOCK, NOTIFY_CHANNEL, WRITE_LOCK

__all__ = ["CommitNotices", "Leadership", "LeadershipLost", "lock_ids"]

Connect = Callable[[dict[str, str]], Awaitable[asyncpg.Connection]]


def lock_ids(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: (classid, objid), its high and low 32 bits
    (objsubid is 1 for a bigint key)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


_CLASSID, _OBJID = lock_ids(LEADER_LOCK)
_FENCE = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = $2::bigint::oid AND objid = $3::bigint::oid AND objsubid = 1)"
)


class LeadershipLost(NotLeader):
    """Leadership is gone for good in this process: its lock session ended and another
    process holds the lock now, or wrote to the log meanwhile."""


class Leadership:
    """The leader lock of one log, taken and kept on a connection of its own (see the module).

    `acquire()` waits until this process holds the lock; `hold()` keeps it (getting it back
    after a broken session when nobody else wrote) and raises LeadershipLost once it is gone;
    `check(conn)` is the fence every commit runs. One way only: a process whose leadership is
    lost does not contend again (it exits and comes back as a standby).
    """

    def __init__(self, connect: Connect, lease: float) -> None:
        if lease <= 0:
            raise ValueError("lease must be > 0 seconds")
        self.lease = lease
        self.step = lease / 4
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self.lock_pid: int | None = None  # the lock session's backend pid, once connected
        self.held = False
        self.lost_reason: str | None = None
        self._lost = anyio.Event()
        self._broken = anyio.Event()  # the lock session failed: get the lock back or give up
        self.reclaimed = 0  # how many times the lock was got back after a broken session

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            # The server ends this session `lease` seconds after its last statement.
            ms = str(max(1, int(self.lease * 1000)))
            self._conn = await self._connect({"idle_session_timeout": ms})
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def try_acquire(self) -> bool:
        """One attempt: True when this process now holds the lock. A connection failure is a
        no (the next attempt connects again), as is storage trouble; any other error (a server
        older than PostgreSQL 14, which has no `idle_session_timeout`) is raised, translated."""
        if self.held:
            return True
        if self._lost.is_set():
            return False
        try:
            with anyio.fail_after(max(self.step, 1.0)):
                conn = await self._connection()
                row = await conn.fetchrow(
                    "SELECT pg_try_advisory_lock($1), pg_backend_pid()", LEADER_LOCK
                )
        except Exception as exc:
            self._drop()  # a lock granted on a session we drop is freed with it
            err = translate_pg(exc)
            if isinstance(err, StorageUnavailable):  # lost, refused, too many connections
                return False
            raise err from exc
        assert row is not None
        self.lock_pid = int(row[1])
        self.held = bool(row[0])
        return self.held

    async def acquire(self) -> float:
        """Wait until this process holds the lock (polling every lease/4 s); return the seconds
        waited."""
        started = time.monotonic()
        while not await self.try_acquire():
            if self._lost.is_set():
                raise LeadershipLost(self.lost_reason or "leadership lost")
            await anyio.sleep(self.step)
        return time.monotonic() - started

    async def hold(
        self,
        known_head: Callable[[], int],
        on_reclaimed: Callable[[], None] | None = None,
    ) -> None:
        """Keep the lock (a `SELECT 1` every lease/4 s) until it is lost: then raise
        LeadershipLost. Never returns.

        When the lock session breaks, get the lock back on a new session, but lead on only if
        the log's head is still `known_head()` (the last position this process committed or
        applied): otherwise another process wrote meanwhile, and leadership is lost."""
        while True:
            with anyio.move_on_after(self.step):
                await self._broken.wait()
            if self._lost.is_set():
                raise LeadershipLost(self.lost_reason or "leadership lost")
            if self._broken.is_set():
                await self._reclaim(known_head)
                if on_reclaimed is not None:
                    on_reclaimed()
                continue
            try:
                conn = self._conn
                if conn is None or conn.is_closed():
                    raise ConnectionError("the lock session is closed")
                with anyio.fail_after(max(self.step, 0.5)):
                    await conn.fetchval("SELECT 1")
            except Exception:
                self._break()

    def _break(self) -> None:
        """The lock session failed: commit nothing until `hold` has the lock back."""
        self.held = False
        self._broken.set()

    async def _reclaim(self, known_head: Callable[[], int]) -> None:
        """Get the lock back on a new session (retrying while the server cannot be reached),
        or mark leadership lost and raise LeadershipLost."""
        self._drop()
        while True:
            try:
                with anyio.fail_after(max(self.step, 1.0)):
                    conn = await self._connection()
                    row = await conn.fetchrow(
                        "SELECT pg_try_advisory_lock($1), pg_backend_pid()", LEADER_LOCK
                    )
                    assert row is not None
                    if not row[0]:
                        self.mark_lost("another process holds the leader lock now")
                        raise LeadershipLost(self.lost_reason or "leadership lost")
                    async with conn.transaction():
                        # Under the write lock: no commit of anyone is in flight.
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                        head = await conn.fetchval("SELECT COALESCE(MAX(position), 0) FROM events")
            except LeadershipLost:
                self._drop()
                raise
            except Exception:
                self._drop()
                await anyio.sleep(self.step)
                continue
            if head != known_head():
                self._drop()  # frees the lock for whoever wrote
                self.mark_lost(
                    f"the log moved on to position {head} under another leader"
                    f" (this process knew {known_head()})"
                )
                raise LeadershipLost(self.lost_reason or "leadership lost")
            self.lock_pid = int(row[1])
            self.reclaimed += 1
            self._broken = anyio.Event()
            self.held = True
            return

    def mark_lost(self, reason: str) -> None:
        """Leadership is gone for good in this process; `hold()` raises."""
        if not self._lost.is_set():
            self.held = False
            self.lost_reason = reason
            self._lost.set()
            self._broken.set()  # wakes `hold`, which raises

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    async def check(self, conn: asyncpg.Connection) -> None:
        """The fence, run inside a commit's transaction after WRITE_LOCK: NotLeader (and the
        transaction rolls back) unless our lock session holds the leader lock."""
        pid = self.lock_pid
        if not self.held or pid is None:
            raise NotLeader("this process does not hold the log's leader lock (a standby)")
        if not await conn.fetchval(_FENCE, pid, _CLASSID, _OBJID):
            self._break()  # `hold` gets it back, or gives up
            raise NotLeader("the leader lock is no longer held by this process: not committed")

    async def close(self) -> None:
        """Close the lock session (the lock is freed with it)."""
        conn, self._conn = self._conn, None
        self.held = False
        await _close(conn)


class CommitNotices:
    """A standby's ear on the log: `wait(timeout)` returns at the next commit notification or
    after `timeout` seconds, whichever is first (a lost connection is opened again at the next
    call, so the caller's periodic read covers a missed notification)."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._event = anyio.Event()
        self.last_position = 0  # the highest head position notified so far

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            self.last_position = max(self.last_position, int(str(payload)))
        self._event.set()

    async def _listening(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        self._conn = None
        conn = await self._connect({})
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._event.set()  # anything committed before LISTEN took effect: read once now

    async def wait(self, timeout: float) -> None:
        try:
            with anyio.fail_after(max(timeout, 1.0)):
                await self._listening()
        except Exception:
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            await anyio.sleep(timeout)
            return
        with anyio.move_on_after(timeout):
            await self._event.wait()
        self._event = anyio.Event()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await _close(conn)


async def _close(conn: asyncpg.Connection | None) -> None:
    """Close `conn` politely within 5 s, else cut it (either way the server ends the session)."""
    if conn is not None:
        with contextlib.suppress(Exception):
            with anyio.fail_after(5):
                await conn.close()
        if not conn.is_closed():
            conn.terminate()
