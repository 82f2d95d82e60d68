"""Stopping the simulated cluster always ends, in a bounded time, whatever it is doing.

The hang these tests pin down: Python 3.11's `asyncio.wait_for` returns the result of an
awaitable that completed just as its caller was cancelled, swallowing the cancellation. The
cluster's activity follower asks the board supervisor for the boards' CPU use every half
second; when `RpiCluster.stop()` cancelled it just as a reply came in (likely on a loaded machine,
where the signal and the reply are handled in the same turn of the event loop), the follower went
on forever, `stop()` waited for it forever, and the boards were never halted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from helpers.rpi_fixtures import connect, nfs_boot_folder, power, require_real_mode, running_cluster
from helpers.waiting import wait_until
from piseduce.sim.rpi.bounded import StopTimeout, stop_task
from piseduce.sim.rpi.fabric import Fabric, FabricError


class _Pipe:
    def write(self, data: bytes) -> None:
        self.data = data

    async def drain(self) -> None:
        return None


class _Supervisor:
    """Just enough of the supervisor's process for `Fabric.call`: the reply is the test's to give."""

    returncode = None

    def __init__(self) -> None:
        self.stdin = _Pipe()


@pytest.mark.parametrize("turns", range(6))
async def test_a_call_cancelled_as_its_reply_arrives_ends_cancelled(tmp_path: Path, turns: int) -> None:
    fabric = Fabric(tmp_path, 1)
    fabric.proc = _Supervisor()  # type: ignore[assignment]
    call = asyncio.create_task(fabric.call("cpu"))
    while not fabric._pending:
        await asyncio.sleep(0)
    (reply,) = fabric._pending.values()
    reply.set_result({"ok": True, "boards": {}})  # what the reader does with the supervisor's answer
    for _ in range(turns):
        await asyncio.sleep(0)
    if call.cancel():  # still running: it must end cancelled, never with the reply
        with pytest.raises(asyncio.CancelledError):
            await call
    else:
        assert (await call)["ok"]


async def test_a_call_without_an_answer_fails_with_the_reason(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path, 1)
    fabric.proc = _Supervisor()  # type: ignore[assignment]
    with pytest.raises(FabricError, match="did not answer cpu within 0.2 s"):
        await fabric.call("cpu", timeout=0.2)
    assert not fabric._pending


async def test_stop_task_ends_a_task_that_swallowed_a_cancellation() -> None:
    swallowed = []

    async def follower() -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # as wait_for did: the first cancellation is lost

    task = asyncio.create_task(follower())
    await asyncio.sleep(0.01)
    await stop_task(task, "the follower", timeout=5)
    assert task.cancelled() and swallowed


async def test_stop_task_gives_up_with_the_reason() -> None:
    # it ignores cancellations until the test is done with it: then it must end, since a task
    # that never does hangs the event loop's own teardown (pytest-asyncio cancels and awaits it)
    stubborn_for = asyncio.Event()
    stubborn_for.set()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if not stubborn_for.is_set():
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.01)  # in its loop
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StopTimeout, match="the stubborn task did not stop within 0.5 s"):
        await stop_task(task, "the stubborn task", timeout=0.5)
    assert loop.time() - started < 3
    stubborn_for.clear()
    await stop_task(task, "the stubborn task", timeout=5)
    assert task.cancelled()


class _ReplyTrigger(dict[int, Any]):
    """The fabric's table of pending calls: once armed, the next reply that comes in starts
    `cluster.stop()` at once, in the same turn of the event loop (the moment of the race)."""

    def __init__(self, start_stop: Any) -> None:
        super().__init__()
        self.start_stop = start_stop
        self.armed = False
        self.stop_task: asyncio.Task[None] | None = None

    def pop(self, key: int, *default: Any) -> Any:
        if self.armed and key in self:
            self.armed = False
            self.stop_task = asyncio.ensure_future(self.start_stop())
        return super().pop(key, *default)


async def test_stop_as_a_board_activity_reply_arrives_halts_everything(tmp_path: Path) -> None:
    require_real_mode()
    async with running_cluster(tmp_path, boards=1) as (cluster, key):
        nfs_boot_folder(cluster, "pi-1")
        await power(cluster.inventory(), 1, on=True)
        async with await connect(cluster, "pi-1", key) as conn:
            assert (await conn.run("hostname")).stdout == "nfspi\n"
        fabric = cluster.fabric
        assert fabric is not None
        trigger = _ReplyTrigger(cluster.stop)
        trigger.update(fabric._pending)
        fabric._pending = trigger
        trigger.armed = True  # the activity follower's next reply
        await wait_until(lambda: trigger.stop_task is not None, 10, what="a board activity reply")
        stopping = trigger.stop_task
        assert stopping is not None
        # (asyncio.wait: awaiting the task under a timeout would cancel it, a second cancellation)
        await asyncio.wait({stopping}, timeout=45)
        assert stopping.done(), "cluster.stop() did not end within 45 s"
        stopping.result()
        assert cluster.fabric is None and not cluster.started
