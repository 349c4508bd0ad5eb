"""`python -m bench` (`make bench`): every benchmark once, with small sizes, one after another.

Each runs in its own process, as `python -m bench.<name>` would, so one benchmark's memory or
event loop never colours the next one's figures. Exits non-zero if any of them failed.
"""

from __future__ import annotations

import subprocess
import sys
import time

# Small enough for about a minute in all on a 2-core machine; see bench/README.md for the
# sizes behind the published figures.
SMALL = {
    "bench_appends": ["--events", "100000", "--appends", "10240", "--lone", "500"],
    "bench_eventstore": ["--appends", "5000", "--replay-events", "50000"],
    "bench_ingest": ["--duration", "3", "--warmup", "1", "--bodies", "40000"],
    "bench_postgres": ["--rounds", "50", "--appends", "12800", "--repeat", "1"],
    "bench_scale": ["--accounts", "1000,10000"],
    "bench_takeover": ["--rounds", "3", "--stop-rounds", "1"],
    "bench_startup": ["--events", "100000", "--accounts", "2000"],
    "bench_timers": ["--timers", "100000", "--accounts", "30000", "--tasks-compare", "10000"],
}


def main(argv: list[str]) -> int:
    names = argv or list(SMALL)
    failed = []
    for name in names:
        args = SMALL.get(name, [])
        print(f"== {name} {' '.join(args)}", flush=True)
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], check=False)
        print(f"   ({time.monotonic() - start:.0f} s)\n", flush=True)
        if done.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
