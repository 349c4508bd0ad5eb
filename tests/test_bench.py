"""The benchmarks still run: each one, at a tiny size, exits 0 and prints its figures.

They time nothing here (timing goals live in the benchmarks themselves); this only keeps a
refactor from breaking `make bench` unnoticed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "bench_appends": [
        "--events", "3000", "--appends", "512", "--rounds", "1", "--lone", "50", "--index-costs",
        "--dir", "{tmp}",
    ],
    "bench_eventstore": ["--appends", "1000", "--replay-events", "2000", "--dir", "{tmp}"],
    "bench_startup": ["--events", "3000", "--accounts", "100", "--repeat", "1", "--dir", "{tmp}"],
    "bench_timers": ["--timers", "2000", "--accounts", "500", "--tasks-compare", "200"],
    "bench_scale": ["--accounts", "200,400", "--appends", "512", "--dir", "{tmp}"],
    "bench_postgres": ["--rounds", "3", "--appends", "512", "--repeat", "1"],
    "bench_takeover": ["--rounds", "1", "--stop-rounds", "1", "--lease", "1"],
    "bench_ingest": [
        "--client", "aiohttp", "--targets", "hmac-json,sqlite,store,daemon-FULL",
        "--connections", "4", "--duration", "0.5", "--warmup", "0.2", "--bodies", "400",
        "--dir", "{tmp}",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_at_a_tiny_size(name: str, tmp_path: Path) -> None:
    """A benchmark at a tiny size exits 0 and prints its figures."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *(a.format(tmp=tmp_path) for a in TINY[name])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the benchmark printed nothing"
    if name == "bench_ingest":  # each server's CPU per request, and the ratio to the floor
        assert "CPU us/req" in done.stdout
        assert "vs sqlite" in done.stdout
