"""How many commits the executor makes per action (issue 15: a thousand concurrent actions cost
what their transitions cost): a step's own 100 % rides with the commit that ends its run()."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from helpers.engine_fixtures import (
    add_node,
    add_reservation,
    load_config,
    migrated,
    reservation,
    sqlite_url,
    write_config,
)
from helpers.fake_driver import FakeDriver
from piseduce.agent.drivers.base import Process, Step, StepContext
from piseduce.agent.engine import runner
from piseduce.agent.engine.executor import Executor
from piseduce.agent.models import Action, Event, Reservation


@contextlib.asynccontextmanager
async def one_deployment(
    tmp_path: Path, driver: type[FakeDriver]
) -> AsyncIterator[tuple[Executor, Any, int]]:
    """One node's deployment by `driver`, run to its end: (the executor, sessions, reservation id)."""
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        add_node(sessions, "n1")
        rid = add_reservation(sessions, "n1")
        config = load_config(write_config(tmp_path, url))
        ex = Executor(config, sessions, driver(config, sessions), "ex-1")
        await ex.tick()
        await ex.drain()
        await ex.shutdown()
        yield ex, sessions, rid
    finally:
        engine.dispose()


class HundredDriver(FakeDriver):
    """'work' reports 30 % then 100 % in run(); 'check' reports 100 % in run() and is done at its
    second poll; each poll notes the progress the database holds."""

    polls: list[int] = []

    def processes(self) -> dict[str, Process]:
        sessions = self.sessions

        async def work(ctx: StepContext) -> None:
            await ctx.progress(30)
            await ctx.progress(100)

        async def check_run(ctx: StepContext) -> None:
            await ctx.progress(100)

        async def check_done(ctx: StepContext) -> bool:
            with sessions() as s:
                query = select(Action.progress).where(Action.reservation_id == ctx.reservation.id)
                HundredDriver.polls.append(s.scalars(query).one())
            return len(HundredDriver.polls) >= 2

        steps = (Step("work", work, weight=1), Step("check", check_run, check_done, poll=0.01, weight=1))
        return {**super().processes(), "deploy": Process("deploy", steps)}


async def test_a_steps_final_100_percent_rides_with_its_done_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every bare percentage would be committed at once: only the steps' 100 % may wait.
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL", 0.0)
    HundredDriver.polls = []
    async with one_deployment(tmp_path, HundredDriver) as (ex, sessions, rid):
        assert reservation(sessions, rid).status == "deployed"
        # 30 %; work done (with its 100 %); check waiting for the result (with its 100 %); done.
        assert ex.journal.entries == 4
        # done() is first polled right after run() (nothing committed in between: 'work' done is
        # 50 %), then again once "waiting for the result" is committed, with the step's 100 %.
        assert HundredDriver.polls == [50, 100]


class NestedStateDriver(FakeDriver):
    """One step that changes a nested value of its state in place between commits (its logs),
    noting what the database holds after each."""

    seen: list[object] = []

    def processes(self) -> dict[str, Process]:
        sessions = self.sessions

        def saved(ctx: StepContext) -> object:
            with sessions() as s:
                r = s.get(Reservation, ctx.reservation.id)
                assert r is not None
                return (r.driver_state or {}).get("job")

        async def work(ctx: StepContext) -> None:
            ctx.state["job"] = {"n": 1}
            await ctx.log("one")
            NestedStateDriver.seen.append(saved(ctx))
            await ctx.log("nothing changed")
            NestedStateDriver.seen.append(saved(ctx))
            ctx.state["job"]["n"] = 2
            await ctx.log("two")
            NestedStateDriver.seen.append(saved(ctx))
            ctx.state["job"]["n"] = 3

        return {**super().processes(), "deploy": Process("deploy", (Step("work", work),))}


async def test_state_changed_in_place_after_a_commit_is_saved_by_the_next(tmp_path: Path) -> None:
    NestedStateDriver.seen = []
    async with one_deployment(tmp_path, NestedStateDriver) as (_ex, sessions, rid):
        r = reservation(sessions, rid)
        assert r.status == "deployed"
        assert NestedStateDriver.seen == [{"n": 1}, {"n": 1}, {"n": 2}]
        assert r.driver_state["job"] == {"n": 3}


async def test_events_written_together_are_one_info_line_and_a_debug_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="piseduce.agent.actions")
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        for name in ("n1", "n2", "n3"):
            add_node(sessions, name)
            add_reservation(sessions, name)
        add_node(sessions, "n4", behavior="raise", behavior_step="boot")
        add_reservation(sessions, "n4")
        config = load_config(write_config(tmp_path, url))
        ex = Executor(config, sessions, FakeDriver(config, sessions), "ex-1")
        await ex.tick()
        await ex.drain()
        await ex.shutdown()
        with sessions() as s:
            written = s.scalar(select(func.count()).select_from(Event)) or 0
            failed = s.scalars(select(Event.message).where(Event.level == "error")).all()
    finally:
        engine.dispose()
    records = [r for r in caplog.records if r.name == "piseduce.agent.actions"]
    batches = [r for r in records if r.levelno == logging.INFO]
    # Every event in a batch's count, each batch one INFO line, each event one DEBUG line.
    assert batches and all(r.msg == "%d events written in one statement (%d nodes)" for r in batches)
    assert sum(int(r.args[0]) for r in batches) == written  # type: ignore[index]
    assert len([r for r in records if r.levelno == logging.DEBUG]) == written - len(failed)
    # The failure keeps its own line, at WARNING.
    assert failed and [r.getMessage() for r in records if r.levelno == logging.WARNING] == failed
