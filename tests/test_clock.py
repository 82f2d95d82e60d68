"""Time is a dependency (agent/clock.py): the executor and the power component read the time,
sleep and bound their waits through their clock only, so that tests can hold time still; and the
fake clock the tests use behaves like the real one where the engine relies on it."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from helpers.clock_helpers import FakeClock
from piseduce.agent.clock import SYSTEM, Clock

AGENT = Path(__file__).resolve().parents[1] / "src/piseduce/agent"
CLOCKED = [*sorted((AGENT / "engine").glob("*.py")), AGENT / "drivers/raspberry/power.py"]
# Calls that read or wait on the real time behind the clock's back.
REAL_TIME = {("time", "time"), ("time", "monotonic"), ("asyncio", "sleep"), ("asyncio", "timeout"),
             ("asyncio", "timeout_at"), ("datetime", "now"), ("datetime", "utcnow")}


def _dotted(node: ast.expr) -> tuple[str, str] | None:
    """`a.b` → (a, b); `x.a.b` → (a, b)."""
    if not isinstance(node, ast.Attribute):
        return None
    if isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    if isinstance(node.value, ast.Attribute):
        return node.value.attr, node.attr
    return None


def test_the_clocked_modules_use_no_other_time() -> None:
    found = []
    for path in CLOCKED:
        tree = ast.parse(path.read_text())
        # `asyncio.sleep(0)` only lets other tasks run: it reads and waits on no time.
        yields = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute) and _dotted(n.func) == ("asyncio", "sleep")
                  and len(n.args) == 1 and isinstance(n.args[0], ast.Constant) and n.args[0].value == 0}
        for node in ast.walk(tree):
            if id(node) in yields:
                continue
            if isinstance(node, ast.Attribute) and _dotted(node) in REAL_TIME:
                found.append(f"{path.name}:{node.lineno} {'.'.join(_dotted(node) or ())}")
            if isinstance(node, ast.Name) and node.id == "utcnow":
                found.append(f"{path.name}:{node.lineno} utcnow")
    assert found == []


async def test_a_fake_deadline_cancels_its_body_like_asyncio_timeout() -> None:
    clock = FakeClock()

    async def bounded(seconds: float, work: float) -> str:
        try:
            async with clock.timeout(seconds) as deadline:
                await clock.sleep(work)
        except TimeoutError:
            assert deadline.expired()
            return "timed out"
        assert not deadline.expired()
        return "done"

    late = asyncio.create_task(bounded(1.0, 5.0))
    soon = asyncio.create_task(bounded(5.0, 1.0))
    await asyncio.sleep(0.01)
    clock.advance(1.0)
    assert await soon == "done" and await late == "timed out"
    assert clock.sleepers == 0  # the watcher of the deadline that was not reached is gone too


async def test_the_system_clock_is_the_real_time() -> None:
    before = SYSTEM.monotonic()
    await SYSTEM.sleep(0.01)
    assert SYSTEM.monotonic() > before and SYSTEM.now().tzinfo is not None
    with pytest.raises(TimeoutError):
        async with SYSTEM.timeout(0.01):
            await SYSTEM.sleep(1)


async def _paused_work(clock: Clock, bound: float, before: float, paused: float, after: float) -> str:
    """Work `before`, then wait `paused` with the countdown paused (twice, nested), then `after`."""
    try:
        async with clock.timeout(bound) as deadline:
            await clock.sleep(before)
            deadline.pause()
            deadline.pause()
            await clock.sleep(paused)
            deadline.resume()
            deadline.resume()
            await clock.sleep(after)
    except TimeoutError:
        return "timed out"
    return "done"


async def test_a_paused_deadline_does_not_count_the_pause_on_both_clocks() -> None:
    # 0.1 + 0.1 of work under a 0.15 bound: a pause of 0.3 in between is not charged, the work is.
    assert await _paused_work(SYSTEM, 0.3, 0.1, 0.3, 0.1) == "done"
    assert await _paused_work(SYSTEM, 0.15, 0.1, 0.3, 0.1) == "timed out"
    clock = FakeClock()
    ok = asyncio.create_task(_paused_work(clock, 3.0, 1.0, 5.0, 1.0))
    late = asyncio.create_task(_paused_work(clock, 1.5, 1.0, 5.0, 1.0))
    for _ in range(40):  # steps finer than any gap between two wake-ups
        await asyncio.sleep(0.01)
        clock.advance(0.25)
    assert await ok == "done" and await late == "timed out"
