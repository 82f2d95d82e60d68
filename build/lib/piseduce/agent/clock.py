"""Time as a dependency: the executor and the power component ask a `Clock` for the time, to
sleep and to bound a wait, never `time`, `datetime` or `asyncio` directly, so that a test can hold
time still and move it on at will (tests/helpers/clock_helpers.py) instead of sleeping.

Shutdown grace periods stay real-time: they bound how long a process takes to stop, whatever the
clock says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from types import TracebackType
from typing import Protocol

from piseduce.dbtypes import utcnow


class Deadline(Protocol):
    """What `Clock.timeout` gives: an async context manager that raises TimeoutError when its
    time is up (its body is cancelled), and says whether that happened."""

    async def __aenter__(self) -> Deadline: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None: ...

    def expired(self) -> bool: ...

    def pause(self) -> None:
        """Stop the countdown (the engine waits for its own database); pauses nest."""
        ...

    def resume(self) -> None:
        """Go on counting down from what was left when the outermost pause began."""
        ...


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Timezone-aware UTC."""
        ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> Deadline:
        """A bound of `seconds` on the body (None: no bound)."""
        ...


class SystemClock:
    """The real time (the event loop's own timers)."""

    def now(self) -> dt.datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> Deadline:
        return LoopDeadline(seconds)


class LoopDeadline:
    """`asyncio.timeout` on the event loop's clock, whose countdown can be paused."""

    def __init__(self, seconds: float | None) -> None:
        self._timeout = asyncio.timeout(seconds)
        self._paused = 0
        self._left: float | None = None

    async def __aenter__(self) -> LoopDeadline:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        await self._timeout.__aexit__(exc_type, exc_val, exc_tb)
        return None

    def expired(self) -> bool:
        return self._timeout.expired()

    def pause(self) -> None:
        self._paused += 1
        when = self._timeout.when()
        if self._paused > 1 or when is None or self._timeout.expired():
            return
        self._left = when - asyncio.get_running_loop().time()
        self._timeout.reschedule(None)

    def resume(self) -> None:
        self._paused -= 1
        if self._paused > 0:
            return
        left, self._left = self._left, None
        if left is None or self._timeout.expired():
            return
        self._timeout.reschedule(asyncio.get_running_loop().time() + max(0.0, left))


SYSTEM = SystemClock()
