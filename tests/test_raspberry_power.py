"""The one PoE power component (drivers/raspberry/power.py): its retry policy owns the retries of
what may pass (no answer), never of what is final (a refusal), pausing on the injected clock;
and the three users (steps, admin routes, sampler) all go through it. The real switch (SNMP v1,
v2c, v3) is exercised by test_raspberry_driver.py, test_raspberry_snmp_v3.py and the e2e tests."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from helpers.clock_helpers import FakeClock
from piseduce.agent.drivers.raspberry.power import (
    PoePower,
    PowerRefused,
    PowerUnreachable,
    RetryPolicy,
)
from piseduce.agent.drivers.raspberry.snmp import MasterPortRefused, SnmpError, SnmpRefused, SwitchInfo

SW = SwitchInfo(name="sw1", ip="127.0.0.1", port_count=8, master_port=8)
RASPBERRY = Path(__file__).resolve().parents[1] / "src/piseduce/agent/drivers/raspberry"


class FlakySnmp:
    """Fails the first `failures` requests with `error`, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[tuple[str, Any]] = []

    def _maybe_fail(self, call: str, arg: Any) -> None:
        self.calls.append((call, arg))
        if self.failures > 0:
            self.failures -= 1
            raise self.error

    async def set_power(self, sw: SwitchInfo, port: int, on: bool) -> None:
        self._maybe_fail("set", (port, on))

    async def port_status(self, sw: SwitchInfo, port: int) -> str:
        self._maybe_fail("status", port)
        return "on"

    async def ports_status(self, sw: SwitchInfo) -> dict[int, str]:
        self._maybe_fail("statuses", None)
        return {1: "on"}

    async def port_power(self, sw: SwitchInfo, port: int) -> float | None:
        self._maybe_fail("draw", port)
        return 4.5


async def _settle(task: asyncio.Task[Any], clock: FakeClock, step: float) -> list[float]:
    """Run `task`, moving the clock on by `step` each time it waits; the moments it moved."""
    moved = []
    while not task.done():
        await asyncio.sleep(0.001)
        if clock.sleepers:
            clock.advance(step)
            moved.append(clock.monotonic())
    return moved


async def test_no_answer_is_retried_with_growing_pauses_on_the_clock() -> None:
    clock = FakeClock()
    snmp = FlakySnmp(2, SnmpError("switch sw1 (127.0.0.1:161): set ...: No SNMP response received"))
    power = PoePower(snmp, RetryPolicy(attempts=4, pause=1.0), clock)  # type: ignore[arg-type]
    task = asyncio.create_task(power.set(SW, 3, True, "pi-3"))
    await _settle(task, clock, 0.5)
    await task
    assert [c for c, _ in snmp.calls] == ["set"] * 3
    assert clock.monotonic() == pytest.approx(3.0)  # paused 1 s, then 2 s, never really waited


async def test_no_answer_after_every_attempt_is_unreachable_and_names_the_board() -> None:
    clock = FakeClock()
    snmp = FlakySnmp(9, SnmpError("No SNMP response received before timeout"))
    power = PoePower(snmp, RetryPolicy(attempts=3, pause=0.5), clock)  # type: ignore[arg-type]
    task = asyncio.create_task(power.set(SW, 3, False, "pi-3"))
    await _settle(task, clock, 0.5)
    with pytest.raises(PowerUnreachable) as err:
        await task
    assert str(err.value) == "power off pi-3: No SNMP response received before timeout"
    assert len(snmp.calls) == 3


@pytest.mark.parametrize(
    "error",
    [MasterPortRefused("port 8 of switch sw1 is its master (uplink) port"), SnmpRefused("notWritable")],
)
async def test_a_refusal_is_final_at_once(error: Exception) -> None:
    clock = FakeClock()
    snmp = FlakySnmp(1, error)
    power = PoePower(snmp, RetryPolicy(attempts=4, pause=1.0), clock)  # type: ignore[arg-type]
    with pytest.raises(PowerRefused) as err:
        await power.set(SW, 8, False, "pi-8")
    assert str(err.value) == f"power off pi-8: {error}"
    assert len(snmp.calls) == 1 and clock.monotonic() == 0


async def test_cycle_pauses_between_off_and_on_and_reads_go_through_the_same_policy() -> None:
    clock = FakeClock()
    snmp = FlakySnmp(1, SnmpError("lost"))
    power = PoePower(snmp, RetryPolicy(attempts=2, pause=0.25), clock)  # type: ignore[arg-type]
    task = asyncio.create_task(power.cycle(SW, 2, 2.0, "pi-2"))
    await _settle(task, clock, 0.25)
    await task
    assert snmp.calls == [("set", (2, False)), ("set", (2, False)), ("set", (2, True))]
    assert clock.monotonic() == pytest.approx(2.25)
    once = PoePower(FlakySnmp(1, SnmpError("switch sw1: lost")))  # type: ignore[arg-type]
    with pytest.raises(PowerUnreachable, match="^switch sw1: lost$"):  # the switch's words only
        await once.draw(SW, 1)
    assert await once.draw(SW, 1) == 4.5
    assert await once.statuses(SW) == {1: "on"} and await once.status(SW, 1) == "on"


def test_only_the_power_component_talks_to_the_switch() -> None:
    """Steps, admin routes and the sampler reach PoE power through PoePower, none through the
    SNMP client's own calls."""
    calls = {"set_power", "port_status", "ports_status", "port_power"}
    users = []
    for path in sorted(RASPBERRY.glob("*.py")):
        if path.name in ("power.py", "snmp.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in calls:
                users.append(f"{path.name}:{node.lineno} {node.attr}")
    assert users == []
