"""Run one fuzz target of `test_fuzz_contracts.py` for a bounded time: `make fuzz`.

    python tests/fuzz/fuzz.py TARGET SECONDS

With atheris installed (`pip install -e '.[fuzz]'`) the run is coverage-guided (libFuzzer),
starting from the sample bodies in a scratch corpus; a failing input is written to the current
directory as `crash-<sha1>` and the exit status is non-zero. Without atheris it falls back to
random mutations of the samples for the same time (not coverage-guided, and says so).
"""

from __future__ import annotations

import hashlib
import importlib
import random
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        pos = rng.randint(0, len(buf))
        if choice < 0.4 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif choice < 0.7:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del buf[pos : pos + rng.randint(1, 16)]
    return bytes(buf)


def _fallback(name: str, seconds: int) -> int:
    contracts = importlib.import_module("test_fuzz_contracts")
    check = contracts.TARGETS[name]
    corpus = contracts.seeds(name) or [b""]
    rng = random.Random(0)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = _mutate(rng.choice(corpus), rng)
        try:
            check(data)
        except Exception:
            Path(f"crash-{hashlib.sha1(data, usedforsecurity=False).hexdigest()}").write_bytes(data)
            raise
        runs += 1
    print(f"fuzz {name}: {runs} inputs in {seconds} s (atheris missing: random mutations only)")
    return 0


def main() -> int:
    name, seconds = sys.argv[1], int(sys.argv[2])
    try:
        import atheris
    except ImportError:
        return _fallback(name, seconds)
    # Only the daemon's own code is instrumented: everything loaded would take minutes.
    with atheris.instrument_imports(include=["daemon", "eventstore"]):
        contracts: ModuleType = importlib.import_module("test_fuzz_contracts")
    check = contracts.TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"staticipd-fuzz-{name}-"))
    for i, seed in enumerate(contracts.seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    argv = [sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=1024", str(corpus)]
    atheris.Setup(argv, check)
    atheris.Fuzz()  # exits the process: 0 when the time is up, non-zero on a failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
