"""What pytest-timeout does when a test has run too long (`timeout` in pyproject.toml), made useful
for this suite's asyncio tests and certain to end the run.

pytest-timeout's `signal` method fails the stuck test with the main thread's stack and the run
goes on; but for an asyncio test that stack is the event loop's `select`, which says nothing of
what was awaited. So, before that failure, the stacks of the loop's tasks are printed (the
coroutine chain of the stuck `await`). And a failed test's teardown may hang too (a task that
ignores cancellation, a fixture that waits), unwatched: pytest-timeout stops its timer when a test
fails (in case a debugger starts). So a watchdog thread ends the whole run, as pytest-timeout's
`thread` method does (captured output and every thread's stack, then exit status 1), when an item
has not ended `BACKSTOP_S` seconds after its timeout: CI gets a traceback, never a hang.
"""

from __future__ import annotations

import asyncio
import io
import signal
import threading
from collections.abc import Generator
from typing import Any

import pytest
import pytest_timeout

BACKSTOP_S = 120.0  # for the failed test's teardown: every wait of the simulators is shorter
_watchdog: threading.Timer | None = None


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where the task's coroutine is, and where each coroutine it awaits is, down to the innermost
    (Task.print_stack shows the outermost only)."""
    lines: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(lines) < 50:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            lines.append(f"  awaiting {awaited!r}")
            break
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return lines


def _task_stacks() -> str:
    loop = asyncio._get_running_loop()  # (the handler runs inside the loop's turn, if any)
    if loop is None:
        return ""
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        out.write(f"--- {task!r}\n" + "\n".join(_await_chain(task)) + "\n")
    return out.getvalue()


@pytest.hookimpl(hookwrapper=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, Any, None]:
    yield
    global _watchdog
    _watchdog = threading.Timer(settings.timeout + BACKSTOP_S, pytest_timeout.timeout_timer, (item, settings))
    _watchdog.name = f"watchdog of {item.nodeid}"
    _watchdog.daemon = True
    _watchdog.start()
    fail = signal.getsignal(signal.SIGALRM)
    if settings.method != "signal" or not callable(fail):
        return

    def handler(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        stacks = _task_stacks()
        if stacks:
            terminal = item.config.get_terminal_writer()
            terminal.sep("+", title=f"Timeout: the asyncio tasks of {item.nodeid}")
            terminal.write(stacks)
        fail(signum, frame)

    signal.signal(signal.SIGALRM, handler)


def pytest_runtest_logfinish() -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.cancel()
        _watchdog = None
