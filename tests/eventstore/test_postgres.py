"""What only the PostgreSQL backend promises: the database itself keeps the log append-only, the
daemon's role needs no more than INSERT and SELECT on it, concurrent writers keep positions
gap-free, and a server that goes away costs a retryable error, never an acknowledged event.

They run on the throwaway server of tests/conftest.py (`pg_server`), and are skipped, saying
why, when the machine has no PostgreSQL server binaries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from daemon.http.context import StorageGuard
from daemon.http.errors import ServiceUnavailable
from eventstore import (
    EventStore,
    EventStoreError,
    InvalidEvent,
    NewEvent,
    StorageUnavailable,
)
from eventstore.postgres import PostgresStore
from eventstore.postgres.schema import MIGRATIONS, schema_version
from eventstore.testing import ThrowawayPostgres

pytestmark = pytest.mark.anyio

# The setup README.md's "PostgreSQL" section gives (tests/test_readme.py checks they agree).
DAEMON_ROLE = "staticipd"
DAEMON_PASSWORD = "daemon-secret"


def ev(stream: str = "s", n: int = 0, event_id: str | None = None) -> NewEvent:
    return NewEvent(stream, "Happened", b'{"n": %d}' % n, event_id=event_id)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[EventStore]:
    s = await EventStore.open(pg_url)
    try:
        yield s
    finally:
        await s.close()


async def test_a_database_url_opens_a_postgres_store(store: EventStore) -> None:
    """EventStore.open with a postgresql:// URL gives the PostgreSQL store, its password hidden."""
    assert isinstance(store, PostgresStore)
    assert store.path.startswith("postgresql://")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ],
)
async def test_the_database_refuses_to_change_or_remove_events(
    store: EventStore, pg_url: str, statement: str
) -> None:
    """Even the tables' owner cannot UPDATE, DELETE or TRUNCATE events: the triggers refuse."""
    await store.append([ev("a", 1), ev("a", 2)])
    conn = await asyncpg.connect(pg_url)
    try:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute(statement)
    finally:
        await conn.close()
    assert (await store.head())[0] == 2
    assert (await store.verify()).ok


async def test_verify_reports_a_disabled_trigger(store: EventStore, pg_url: str) -> None:
    """verify() reports the log as unprotected when a refusing trigger is disabled."""
    await store.append([ev("a")])
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_refuse_truncate")
    finally:
        await conn.close()
    report = await store.verify()
    assert not report.ok
    assert [(d.kind, d.detail) for d in report.damage] == [
        ("triggers_missing", "absent: events_refuse_truncate")
    ]


async def test_a_nul_character_is_refused_alone(store: EventStore) -> None:
    """A stream name PostgreSQL cannot store is InvalidEvent for its call; the others commit."""
    from eventstore import AppendCall

    bad = AppendCall([NewEvent("a\x00b", "T", b"{}")])
    good = AppendCall([ev("a")])
    outcomes = await store.append_many([bad, good, bad])
    assert isinstance(outcomes[0], InvalidEvent)
    assert isinstance(outcomes[2], InvalidEvent)
    assert not isinstance(outcomes[1], EventStoreError)
    assert outcomes[1].last_position == 1
    with pytest.raises(InvalidEvent):
        await store.append([NewEvent("s", "T\x00", b"{}")])
    assert (await store.head())[0] == 1


async def grant_daemon_role(admin_url: str) -> None:
    """The README's setup: the daemon's role may INSERT and SELECT the log, nothing more."""
    from tests.test_readme import postgres_setup_sql

    conn = await asyncpg.connect(admin_url)
    try:
        for statement in postgres_setup_sql(DAEMON_ROLE, DAEMON_PASSWORD):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_role_with_insert_and_select_only_runs_the_daemons_store(
    pg_server: ThrowawayPostgres,
) -> None:
    """The daemon's role (granted as README says) appends, checkpoints, snapshots and verifies,
    with its password given apart from the URL, and still cannot change an event."""
    database = pg_server.create_database()
    owner_url = pg_server.url(database)
    async with EventStore.open(owner_url) as owner:  # the owner creates the tables
        await owner.append([ev("a", 0)])
    await grant_daemon_role(owner_url)
    daemon_url = pg_server.url(database, user=DAEMON_ROLE)
    async with EventStore.open(daemon_url, password=DAEMON_PASSWORD) as store:
        r = await store.append([ev("a", 1), ev("b", 2)])
        assert [x.position for x in r.records] == [2, 3]
        await store.checkpoint(b"key")
        await store.set_consumer_position("p", 3)
        await store.set_consumer_position("p", 4)
        await store.save_snapshot("s", 3, b"x")
        await store.save_snapshot_parts("k", 3, b"h", [("a", b"1")], complete=True)
        await store.save_snapshot_parts("k", 3, b"h", [("a", None)], complete=True)
        await store.save_snapshot_parts("k", 4, None, [("b", b"2", "l", "t")], complete=True)
        assert await store.open_snapshot("k") is None
        await store.save_snapshot_parts("k", 4, b"h4", [("c", b"3", "l", None)])
        reader = await store.open_snapshot("k")
        assert reader is not None
        with reader:
            assert (reader.labels(), reader.times()) == ({"l": ["b", "c"]}, {"b": "t"})
        assert (await store.verify(b"key")).ok
    in_url = pg_server.url(database, user=DAEMON_ROLE, password=DAEMON_PASSWORD)
    async with EventStore.open(in_url, readonly=True) as reader:
        assert DAEMON_PASSWORD not in reader.path
        assert "***" in reader.path
    conn = await asyncpg.connect(daemon_url, password=DAEMON_PASSWORD)
    try:
        for statement in ("UPDATE events SET data = '{}'", "DELETE FROM checkpoints"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_database_of_schema_2_gains_labels_and_times_keeping_its_parts(
    pg_url: str,
) -> None:
    """A log written before parts had labels and times reads read-only as before (every part
    under the label "", none timed) and, opened to write, is migrated with its parts kept."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for version in (1, 2):
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, 'then')", version)
        await conn.execute("INSERT INTO snapshots VALUES ('p', 1, 'h', 'then')")
        await conn.execute("INSERT INTO snapshot_parts VALUES ('p', 'b', '2'), ('p', 'a', '1')")
    finally:
        await conn.close()
    for readonly in (True, False):
        async with EventStore.open(pg_url, readonly=readonly) as store:
            reader = await store.open_snapshot("p")
            assert reader is not None
            with reader:
                assert reader.blobs() == {"a": b"1", "b": b"2"}
                assert (reader.labels(), reader.times()) == ({"": ["a", "b"]}, {})
    conn = await asyncpg.connect(pg_url)
    try:
        assert await schema_version(conn) == max(MIGRATIONS) == 3
    finally:
        await conn.close()


async def test_without_its_password_the_role_is_refused(pg_server: ThrowawayPostgres) -> None:
    """A wrong password is a StorageUnavailable naming the refusal, not a driver error."""
    database = pg_server.create_database()
    async with EventStore.open(pg_server.url(database)):
        pass
    await grant_daemon_role(pg_server.url(database))
    with pytest.raises(StorageUnavailable, match="password"):
        await EventStore.open(pg_server.url(database, user=DAEMON_ROLE), password="wrong")


async def test_libpqs_own_password_places_work(
    pg_server: ThrowawayPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a password given, the role's password is found where libpq looks: a password
    file (PGPASSFILE, ~/.pgpass's format) or PGPASSWORD."""
    database = pg_server.create_database()
    async with EventStore.open(pg_server.url(database)):
        pass
    await grant_daemon_role(pg_server.url(database))
    url = pg_server.url(database, user=DAEMON_ROLE)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:{database}:{DAEMON_ROLE}:{DAEMON_PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    async with EventStore.open(url) as store:
        await store.append([ev("a")])
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    monkeypatch.setenv("PGPASSWORD", DAEMON_PASSWORD)
    async with EventStore.open(url, readonly=True) as reader:
        assert (await reader.head())[0] == 1


async def test_the_urls_tls_settings_reach_the_connection(pg_server: ThrowawayPostgres) -> None:
    """`sslmode` in the URL is obeyed: on a loopback server without TLS, `require` is refused
    (StorageUnavailable) where `disable` connects."""
    server = await asyncio.to_thread(ThrowawayPostgres.start, pg_server.bindir, tcp=True)
    try:
        database = await asyncio.to_thread(server.create_database)
        async with EventStore.open(server.tcp_url(database) + "?sslmode=disable") as store:
            await store.append([ev("a")])
        with pytest.raises(StorageUnavailable, match="SSL"):
            await EventStore.open(server.tcp_url(database) + "?sslmode=require")
    finally:
        await asyncio.to_thread(server.stop)


async def test_two_writers_keep_positions_gap_free_and_the_chain_whole(pg_url: str) -> None:
    """Two stores (two connections, as two processes would) appending at once leave positions
    1..N without a gap, each in the order it committed, and a chain that verifies."""
    a = await EventStore.open(pg_url, max_batch=7)
    b = await EventStore.open(pg_url, max_batch=5)
    try:

        async def appender(store: EventStore, name: str) -> list[int]:
            got = []
            for i in range(40):
                r = await store.append([ev(f"{name}-{i % 3}", i), ev("shared", i)])
                got.extend(x.position for x in r.records)
            return got

        results = await asyncio.gather(
            *(appender(s, f"{s_name}{k}") for k in range(4) for s_name, s in (("a", a), ("b", b)))
        )
        positions = sorted(p for r in results for p in r)
        assert positions == list(range(1, 641))
        records = [x async for x in a.read_all()]
        assert [x.position for x in records] == positions
        shared = [x.version for x in records if x.stream == "shared"]
        assert shared == list(range(1, 321))
        report = await b.verify()
        assert report.ok, report.damage
        assert report.events_checked == 640
    finally:
        await a.close()
        await b.close()


async def test_the_logs_times_never_go_back_when_another_process_wrote_by_a_later_clock(
    pg_url: str,
) -> None:
    """A process that opened the log before another wrote to it (a standby that takes over)
    records its events no earlier than the last one in the log, even when its clock is behind."""
    from datetime import UTC, datetime

    noon = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    earlier = datetime(2026, 11, 25, 11, 55, tzinfo=UTC)
    behind = await EventStore.open(pg_url, clock=lambda: earlier)
    try:
        async with await EventStore.open(pg_url, clock=lambda: noon) as ahead:
            await ahead.append([ev("a")])
        await behind.append([ev("b")])
        times = [r.recorded_at async for r in behind.read_all()]
    finally:
        await behind.close()
    assert times == [noon, noon]


async def test_a_lost_server_costs_a_retry_never_an_acknowledged_event(
    pg_lone_server: ThrowawayPostgres,
) -> None:
    """While the server is gone appends fail with StorageUnavailable (a 503 with Retry-After
    to HTTP clients); every append that returned is in the log; once the server is back the
    same store appends again without being reopened."""
    url = pg_lone_server.url(pg_lone_server.create_database())
    store = await EventStore.open(url)
    try:
        acked: list[str] = []

        async def appender(k: int) -> None:
            for i in range(1_000):
                try:
                    r = await store.append([ev(f"s{k}", i)])
                except StorageUnavailable:
                    return
                acked.extend(x.event_id for x in r.records)

        tasks = [asyncio.ensure_future(appender(k)) for k in range(8)]
        while len(acked) < 50:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(pg_lone_server.kill)  # mid-append: eight appenders are writing
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

        with pytest.raises(StorageUnavailable) as caught:
            await store.append([ev("down")])
        with pytest.raises(ServiceUnavailable) as answer, StorageGuard(standby_retry_after=2):
            raise caught.value
        assert answer.value.status == 503
        assert "Retry-After" in answer.value.headers
        assert not store.healthy

        await asyncio.to_thread(pg_lone_server.restart)
        r = await store.append([ev("back")])
        assert store.healthy
        stored = {x.event_id async for x in store.read_all()}
        assert set(acked) <= stored
        assert r.records[0].position == len(stored)
        assert (await store.verify()).ok
    finally:
        await store.close()
