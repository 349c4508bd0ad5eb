"""The daemon's wall clock: aware UTC. Parts take it as a `clock` argument so tests can pin it;
the domain core never reads it (its `now` is always an argument)."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)
