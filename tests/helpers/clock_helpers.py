"""A clock that stands still until a test moves it (agent/clock.py's `Clock`): time-dependent
tests advance it instead of sleeping."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from piseduce.dbtypes import utcnow


class FakeClock:
    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or utcnow()
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._sleeping: dict[asyncio.Future[None], asyncio.Task[object] | None] = {}

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, waiter))
        self._sleeping[waiter] = asyncio.current_task()
        try:
            await waiter
        finally:
            self._sleepers = [(t, w) for t, w in self._sleepers if w is not waiter]
            self._sleeping.pop(waiter, None)

    def advance(self, seconds: float) -> None:
        """Move time on: every sleep due by then wakes (on the loop's next turns)."""
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds
        for due, waiter in list(self._sleepers):
            if due <= self._mono and not waiter.done():
                waiter.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, w in self._sleepers if not w.done())

    def waiting(self, task: asyncio.Task[object]) -> bool:
        """True while `task` itself sleeps on this clock (it does nothing until time moves)."""
        return any(t is task and not w.done() for w, t in self._sleeping.items())

    async def run(
        self, tasks: Callable[[], Iterable[asyncio.Task[Any]]], step: float, limit: float = 10.0
    ) -> None:
        """Move time on by `step` each time every task of `tasks()` waits on the clock, until they
        are all done: time never moves while one of them works (or waits on the database)."""
        deadline = asyncio.get_running_loop().time() + limit
        while running := list(tasks()):
            if all(self.waiting(t) for t in running):
                self.advance(step)
            elif asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"tasks still busy after {limit} s of real time")
            await asyncio.sleep(0.001)

    def timeout(self, seconds: float | None) -> FakeDeadline:
        return FakeDeadline(self, seconds)


class FakeDeadline:
    """`asyncio.timeout` on the fake clock: a watcher sleeps on the clock, then cancels the body."""

    def __init__(self, clock: FakeClock, seconds: float | None) -> None:
        self.clock = clock
        self.seconds = seconds
        self._expired = False
        self._watcher: asyncio.Task[None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._due: float | None = None
        self._paused = 0

    async def __aenter__(self) -> FakeDeadline:
        if self.seconds is not None:
            self._task = asyncio.current_task()
            self._due = self.clock.monotonic() + self.seconds
            self._watcher = asyncio.create_task(self._watch(self.seconds))
        return self

    def pause(self) -> None:
        self._paused += 1
        if self._paused == 1 and self._watcher is not None and not self._expired:
            self._watcher.cancel()
            self._watcher = None
            assert self._due is not None
            self._due = self._due - self.clock.monotonic()  # what is left, while paused

    def resume(self) -> None:
        self._paused -= 1
        if self._paused == 0 and self._task is not None and self._watcher is None and not self._expired:
            assert self._due is not None
            left = max(0.0, self._due)
            self._due = self.clock.monotonic() + left
            self._watcher = asyncio.create_task(self._watch(left))

    async def _watch(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError from exc_val
        return None

    def expired(self) -> bool:
        return self._expired
