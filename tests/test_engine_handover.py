"""A node is handed over only once given back: the next reservation of a node is not deployed
while the previous one's destroy still runs on it (the soak found both at once on one Pi: a slow
destroy running past the turnaround gap, the next user's deployment power-cycling the board under
it, both failing and the board marked broken)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from helpers.engine_fixtures import (  # noqa: E402
    actions,
    add_node,
    add_reservation,
    events,
    fake_runs,
    load_config,
    migrated,
    reservation,
    sqlite_url,
    write_config,
)
from helpers.fake_driver import FakeDriver
from helpers.waiting import wait_until  # noqa: E402
from piseduce.agent.engine.executor import Executor  # noqa: E402
from piseduce.agent.models import ACTION_OPEN, utcnow  # noqa: E402


def first_event(sessions: object, rid: int, message: str) -> dt.datetime:
    return next(e.time for e in events(sessions, rid) if e.message == message)  # type: ignore[arg-type]


async def test_the_next_reservation_deploys_only_once_the_previous_destroy_is_over(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    config = load_config(write_config(tmp_path, url))
    try:
        add_node(sessions, "n1", step_delay=0.6)  # each step of the destroy (wipe, power off) takes 0.6 s
        now = utcnow()
        # The previous slot is over (turnaround gap included): its destroy is due now ...
        old = add_reservation(sessions, "n1", status="deployed", start=now - dt.timedelta(hours=1),
                              hours=1 - 2 / 3600)
        # ... and the next one, booked right after it in the calendar, starts now.
        new = add_reservation(sessions, "n1", status="scheduled", start=now, hours=1,
                              owner="bob@example.org")
        executor = Executor(config, sessions, FakeDriver(config, sessions), "ex-1")
        stop = asyncio.Event()
        task = asyncio.create_task(executor.run_forever(stop))
        overlap = []
        try:
            async def both_open() -> None:
                while not stop.is_set():
                    held = [rid for rid in (old, new)
                            if any(a.status in ACTION_OPEN for a in actions(sessions, rid))]
                    if len(held) == 2:
                        overlap.append(held)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(both_open())
            await wait_until(lambda: reservation(sessions, new).status in ("deployed", "failed"), 30)
            stop.set()
            await watcher
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        assert reservation(sessions, old).status == "ended"
        assert reservation(sessions, new).status == "deployed"
        assert overlap == [], "both reservations had an action running on n1 at once"
        handed_over = first_event(sessions, old, "destroy finished")
        assert first_event(sessions, new, "the reservation starts: deployment queued") >= handed_over
        messages = [e.message for e in events(sessions, new)]
        assert any("the deployment waits for n1 to be given back" in m for m in messages), messages
        runs = fake_runs(tmp_path / "fake.log")
        assert runs[("n1", "destroy", "wipe")] == 1 and runs[("n1", "deploy", "install")] == 1
    finally:
        engine.dispose()
