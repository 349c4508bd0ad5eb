"""The event log on PostgreSQL: `EventStore.open("postgresql://...")` returns a PostgresStore."""

from .store import PostgresStore, is_database_url, redact_url

__all__ = ["PostgresStore", "is_database_url", "redact_url"]
