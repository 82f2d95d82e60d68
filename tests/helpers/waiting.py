"""The one way tests wait for something: `wait_until` (in a coroutine; `wait_until_async` when the
condition awaits) and `wait_until_sync` (elsewhere) call `predicate` every `interval` seconds until
it returns something true, and return that; past `timeout` they fail with `WaitTimeout` naming
the condition (`what`, or the predicate's source line)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


class WaitTimeout(TimeoutError, AssertionError):
    """A condition not reached in time (an AssertionError for pytest, a TimeoutError for callers)."""


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))


def _timed_out(predicate: Callable[[], Any], timeout: float, what: str | None) -> WaitTimeout:
    return WaitTimeout(f"not reached within {timeout:g} s: {what or _describe(predicate)}")


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *, what: str | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise _timed_out(predicate, timeout, what)
        await asyncio.sleep(interval)
    return value


async def wait_until_async(
    predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05, *,
    what: str | None = None,
) -> Any:
    """`wait_until` for a condition that must itself await (an HTTP call, a database read)."""
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise _timed_out(predicate, timeout, what)
        await asyncio.sleep(interval)
    return value


def wait_until_sync(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *, what: str | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise _timed_out(predicate, timeout, what)
        time.sleep(interval)
    return value
