"""Bounded waits for the simulator: a fault becomes an error that says what did not happen,
never a hang.

Two rules, from the hang of `RpiCluster.stop()`:

- a time limit is `asyncio.timeout()`, not `asyncio.wait_for()`: on Python 3.11, `wait_for`
  returns the result of an awaitable that completed just as its caller was cancelled, and the
  cancellation is lost (3.12 rebuilt `wait_for` on `timeout()`);
- a task is stopped with `stop_task`, which cancels it again until it has ended, for at most a
  given time: one `cancel()` is not enough for a loop that may lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
_RETRY_S = 0.2  # how long a cancellation is given before it is sent again


class StopTimeout(RuntimeError):
    pass


async def stop_task(task: asyncio.Task[Any] | None, what: str, timeout: float = STOP_TIMEOUT_S) -> None:
    """Cancels `task` until it has ended, waiting `timeout` seconds at most (StopTimeout then).
    The task's own failure, if it had one, is logged: its stopping is what matters here."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            raise StopTimeout(f"{what} did not stop within {timeout:g} s")
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RETRY_S, left))
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s had failed: %r", what, task.exception())


async def wait_process(proc: asyncio.subprocess.Process, what: str, timeout: float) -> int:
    """A process's exit status; killed when it has not exited after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    except TimeoutError:
        log.warning("%s did not exit within %g s: killed", what, timeout)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    except TimeoutError:
        raise StopTimeout(f"{what} (PID {proc.pid}) did not exit {timeout:g} s after SIGKILL") from None
