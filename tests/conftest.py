"""Shared test configuration: async tests run on asyncio through anyio's pytest plugin."""

from collections.abc import Iterator

import pytest

from eventstore.testing import ThrowawayPostgres, find_server_binaries


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL for the whole run (a Unix socket in a temporary directory),
    stopped at the end; the PostgreSQL tests are skipped, saying so, without the binaries."""
    if find_server_binaries() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: PostgreSQL backend untested"
            " (Debian: apt-get install postgresql)"
        )
    server = ThrowawayPostgres.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: ThrowawayPostgres) -> Iterator[str]:
    """The URL of a fresh, empty database on the throwaway server (one per test, dropped
    after it)."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture
def pg_lone_server(pg_server: ThrowawayPostgres) -> Iterator[ThrowawayPostgres]:
    """A throwaway server of its own, for a test that stops and restarts it."""
    server = ThrowawayPostgres.start(pg_server.bindir)
    try:
        yield server
    finally:
        server.stop()
