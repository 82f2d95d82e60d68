"""The cyclic garbage collector paused while a worker builds a large structure it keeps (the
calendar's days and windows, calendar_cache.py).

Why: a week of a 5,000-node site is some 30,000 slots, 10^5 new containers; the collector runs
every 700 allocations and every few hundred runs scans the whole heap, cached days included. At
5,000 nodes that was half a cold calendar's time (bench_agent's GC column). Paused, the new objects
are examined once, by the first collection after. None of them is garbage in a cycle.

That first collection was itself most of the cost (a young collection of the 10^5 objects made
while paused: 30-90 ms of a cold week at 5,000 nodes), so the last thread out hands them to the
oldest generation unexamined (gc.freeze then gc.unfreeze: two list moves): a full collection looks
at them once, when it comes (a cached week's tuples that the cache dropped by then, most of them,
were freed by their counts without being looked at: a full collection after 5 cold weeks took 83 ms
against 77 without this). Young objects of other threads go along, their cycles collected by that
full collection instead of a young one. Skipped when something froze objects itself
(gc.get_freeze_count(): unfreezing would release them).

gc.disable is process-wide and the API's workers run requests in threads: the threads inside are
counted, and the last one out enables the collector again, if it was enabled when the first came in.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pause:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._was_enabled:
                    if gc.get_freeze_count() == 0:
                        gc.freeze()  # every tracked object to the permanent generation,
                        gc.unfreeze()  # then all to the oldest: none in the young ones
                    gc.enable()


paused = _Pause()
