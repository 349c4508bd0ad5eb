"""A progress line with rate and ETA for long log scans, drawn only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws `label: done/total (rate/s, ETA)` on stderr at most ten times a second.

    Quiet when stderr is not a terminal, so piped and scripted runs print only their result.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, enabled: bool | None = None):
        self._label = label
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and done < total:
            return
        self._last_draw = now
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 and total > done else 0.0
        pct = 100.0 * done / total if total else 100.0
        self._stream.write(
            f"\r{self._label}: {done:,}/{total:,} ({pct:5.1f}%) {rate:,.0f}/s ETA {eta:5.1f}s "
        )
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
