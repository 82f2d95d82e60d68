"""A slow database never fails a step: the time the engine waits for its own commits (progress,
logs and state saved while a step runs) is not charged to the step's `fail_after`, on SQLite (one
database thread, so the commits also queue) and on PostgreSQL. A step whose own work overruns its
bound still fails, with the same reason as on a fast database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from helpers.engine_fixtures import (
    add_node,
    add_reservation,
    load_config,
    migrated,
    postgres_database,
    reservation,
    sqlite_url,
    write_config,
)
from helpers.fake_driver import FakeDriver
from piseduce.agent.drivers.base import Process, Step, StepContext
from piseduce.agent.engine.executor import Executor

# Each chunk of a step's own work, and how many: 0.5 s of work under a 0.9 s fail_after.
CHUNK = 0.1
CHUNKS = 5
FAIL_AFTER = 0.9
# What every commit costs on the slowed database: five progress commits alone (0.75 s) plus the
# work (0.5 s) overrun the bound when the engine charges its own waits to the step.
COMMIT_DELAY = 0.15


class ChattyDriver(FakeDriver):
    """One step whose run() reports progress with a message after each chunk of work (a commit
    each), then a done() poll that saves a counter in the step's state twice (a commit each)."""

    def processes(self) -> dict[str, Process]:
        async def write(ctx: StepContext) -> None:
            chunks = int(ctx.node.attrs.get("chunks", CHUNKS))
            for i in range(chunks):
                await asyncio.sleep(float(ctx.node.attrs.get("chunk", CHUNK)))
                await ctx.progress(100 * (i + 1) // chunks, f"chunk {i + 1} of {chunks} written")

        async def written(ctx: StepContext) -> bool:
            polls = int(ctx.state.get("polls", 0)) + 1
            ctx.state["polls"] = polls
            return polls > 2

        step = Step("write_image", write, written, fail_after=FAIL_AFTER, poll=0.01)
        return {**super().processes(), "deploy": Process("deploy", (step,))}


def slow_commits(engine: Engine) -> None:
    """Every COMMIT of this engine takes COMMIT_DELAY longer (in the database thread)."""

    @event.listens_for(engine, "commit")
    def _slow(conn: Any) -> None:
        time.sleep(COMMIT_DELAY)


PG = pytest.param(
    "postgres",
    marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not os.environ.get("PISEDUCE_PG_URL"), reason="PISEDUCE_PG_URL is not set"),
    ],
)


@pytest.fixture(params=["sqlite", PG])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            yield stack.enter_context(postgres_database())
        else:
            yield sqlite_url(tmp_path)


@pytest.mark.slow
async def test_commits_made_by_a_running_step_do_not_count_against_its_fail_after(
    url: str, tmp_path: Path
) -> None:
    engine, sessions = migrated(url)
    try:
        names = [f"chatty{i}" for i in range(4)]
        for name in names:
            add_node(sessions, name)
        # Its own work (2 s, without a single commit) overruns the bound: it must still fail.
        add_node(sessions, "stuck", chunks=1, chunk=2.0)
        rids = {n: add_reservation(sessions, n) for n in [*names, "stuck"]}
        slow_commits(engine)
        config = load_config(write_config(tmp_path, url))
        ex = Executor(config, sessions, ChattyDriver(config, sessions), "ex-slow")
        t0 = time.monotonic()
        await ex.tick()
        await asyncio.wait_for(ex.drain(), 60)
        took = time.monotonic() - t0
        await ex.shutdown()
        got = {n: reservation(sessions, rid) for n, rid in rids.items()}
    finally:
        engine.dispose()
    failed = {n: r.error for n, r in got.items() if n != "stuck" and r.status != "deployed"}
    assert not failed, (failed, took)
    assert got["stuck"].status == "failed"
    assert got["stuck"].error == "write image: no result after 0.9 s"
