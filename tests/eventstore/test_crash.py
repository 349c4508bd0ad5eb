"""Crash safety: SIGKILL loses no acknowledged event and leaves a valid chain."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventstore import EventStore

CHILD = """
import asyncio, sys
from eventstore import EventStore, NewEvent

async def main():
    async with await EventStore.open(sys.argv[1]) as store:
        print("ready", flush=True)
        i = 0
        while True:
            calls = [
                store.append([NewEvent(f"s{j % 5}", "T", b'{"i": %d}' % j)])
                for j in range(i, i + 32)
            ]
            for done in asyncio.as_completed(calls):
                result = await done
                # Printed only after append returned, i.e. after COMMIT.
                print(result.records[0].event_id, flush=True)
            i += 32

asyncio.run(main())
"""


async def check(path: Path, acked: set[str]) -> int:
    async with await EventStore.open(path, create=False) as store:
        stored = {e.event_id async for e in store.read_all()}
        report = await store.verify()
    assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
    assert report.ok, report.damage
    return len(stored)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """After SIGKILL at random moments, every acknowledged append is present and verify() passes."""
    path = tmp_path / "log.db"
    out = tmp_path / "acked.txt"
    rng = random.Random()
    acked: set[str] = set()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    total = 0
    for _ in range(4):
        with out.open("w") as sink:
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=sink, env=env)
            try:
                deadline = time.monotonic() + 10
                while "ready" not in out.read_text() and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.1, 0.8))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=10)
        lines = out.read_text().splitlines()
        acked |= {line for line in lines if len(line) == 36}
        total = asyncio.run(check(path, acked))
    assert len(acked) > 0
    assert total >= len(acked)
