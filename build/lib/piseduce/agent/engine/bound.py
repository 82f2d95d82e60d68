"""The bound on the driver call an action runs now (a step's run() and done() polls, an automatic
reboot), whose countdown stops while the engine waits for its own database: the commits a step
causes as it runs (progress, logs, saved state) queue behind other actions' commits or wait on a
slow server, and that time is not the node's, so it never counts against the step's timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from piseduce.agent.clock import Deadline


class StepBound:
    """At most one deadline at a time (the runner drives one call at a time)."""

    def __init__(self) -> None:
        self._current: Deadline | None = None

    @asynccontextmanager
    async def bounded(self, timeout: Deadline) -> AsyncIterator[None]:
        """`timeout` around the body, paused by `engine_wait` meanwhile."""
        async with timeout:
            self._current = timeout
            try:
                yield
            finally:
                self._current = None

    @contextmanager
    def engine_wait(self) -> Iterator[None]:
        """Around a wait for the engine's own database: the countdown stops, then goes on."""
        current = self._current
        if current is not None:
            current.pause()
        try:
            yield
        finally:
            if current is not None:
                current.resume()
