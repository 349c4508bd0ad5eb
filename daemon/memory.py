"""How the process collects garbage: thresholds for a large, long-lived heap.

Every command holds a large, long-lived heap (the daemon's projection; a log command's
projection or its indexes) and makes many short-lived objects (a request's, an event's). With
CPython's default thresholds (700, 10, 10) a full collection, which walks that whole heap, runs
every few hundred requests or events: in the ingest benchmark that cost about 10 % of throughput
and nearly doubled p99, and it was a third of `status`'s time at a million accounts. Collect the
young generation every 10,000 allocations and the old ones rarely; reference counting still
frees nearly everything.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Set the collector's thresholds to GC_THRESHOLDS."""
    gc.set_threshold(*GC_THRESHOLDS)
