"""What the event store's tests share: a fresh store on a real SQLite file."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventstore import EventStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    s = await EventStore.open(tmp_path / "log.db")
    try:
        yield s
    finally:
        await s.close()
