"""A domain-free, append-only, hash-chained event log on SQLite."""
