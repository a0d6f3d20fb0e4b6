"""Python's cyclic garbage collector during a run.

A run keeps every deal it read, their links, contexts and planned actions until it ends: hundreds
of thousands of container objects that all live as long as the run. With the default young-
generation threshold (700 allocations) the collector runs full passes over that growing heap
again and again, so a run's time per deal grows with its size: 0.04 ms a deal at 10,000 deals,
0.13 ms at 50,000 (benchmarks/RESULTS.md, "Engine growth"). Raising the threshold for the run
makes the passes rare; reference counting still frees everything that is not in a cycle at once.
See https://docs.python.org/3/library/gc.html#gc.set_threshold.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: allocations (net of deallocations) between young collections while a run is going
RUN_THRESHOLD = 100_000

_lock = threading.Lock()
_runs = 0  # runs going on in this process (workers may run pairs on threads)
_saved: tuple[int, ...] = ()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the young-generation threshold while at least one run is going; the first run
    to start saves the process's thresholds and the last to end puts them back."""
    global _runs, _saved
    with _lock:
        if _runs == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(max(_saved[0], RUN_THRESHOLD), *_saved[1:])
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                gc.set_threshold(*_saved)
