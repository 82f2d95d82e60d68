"""Progress of a long phase (write, verify, read, wipe) as JSON lines: bytes done of a total.

A line goes out when the phase starts, at least every `interval` seconds while bytes move, and
when it ends. The agent treats a phase whose `done` stops growing as stalled, so a line must
never claim progress that did not happen, and a working phase must never stay silent long:
the card I/O flushes every few tens of megabytes (`cardio.FLUSH_BYTES`), so even at the slowest
card speed a line that advances goes out every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Emit = Callable[[dict[str, Any]], None]
REPORT_INTERVAL = 1.0


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


class Meter:
    def __init__(self, emit: Emit, interval: float = REPORT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.interval = interval
        self.clock = clock
        self.phase = ""
        self.total = 0
        self.done = 0
        self.started = 0.0
        self.at = 0.0

    def start(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done = phase, max(0, total), 0
        self.started = self.at = self.clock()
        self._send()

    def advance(self, done: int, **extra: Any) -> None:
        self.done = done
        now = self.clock()
        if now - self.at >= self.interval:
            self.at = now
            self._send(**extra)

    def report(self, done: int, **extra: Any) -> None:
        """A line now, whatever the interval (a caller that paces its own lines)."""
        self.done = done
        self.at = self.clock()
        self._send(**extra)

    def finish(self, **extra: Any) -> None:
        self.total = max(self.total, self.done)
        self._send(**extra)

    def _send(self, **extra: Any) -> None:
        pct = min(100, self.done * 100 // self.total) if self.total else 0
        elapsed = self.clock() - self.started
        rate = f", {self.done / elapsed / 1e6:.1f} MB/s" if elapsed > 0 and self.done else ""
        message = f"{self.phase}: {_size(self.done)} of {_size(self.total)}{rate}"
        self.emit({"progress": pct, "phase": self.phase, "done": self.done, "total": self.total,
                   "message": message, **extra})
