"""How the scheduling pass claims ready actions: all of them in one pass (a thousand start together,
not in waves of a fixed batch), or an executor's fair share when others share the database; an
action that waited past the patience goes to whoever has room; a stopping executor leaves no
share behind. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from helpers.engine_fixtures import (
    add_reservation,
    load_config,
    messages,
    migrated,
    postgres_database,
    reservation,
    sqlite_url,
    write_config,
)
from helpers.fake_driver import FakeDriver
from piseduce.agent.engine.executor import Executor
from piseduce.agent.engine.schedule import queue_deploys
from piseduce.agent.models import Action, ExecutorPresence, Node, utcnow
from piseduce.db import write_session

PG = pytest.param(
    "postgres",
    marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not os.environ.get("PISEDUCE_PG_URL"), reason="PISEDUCE_PG_URL is not set"),
    ],
)


@pytest.fixture(params=["sqlite", PG])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str, sessionmaker[Session]]]:
    with contextlib.ExitStack() as stack:
        pg = request.param == "postgres"
        url = stack.enter_context(postgres_database()) if pg else sqlite_url(tmp_path)
        engine, sessions = migrated(url)
        stack.callback(engine.dispose)
        yield tmp_path, url, sessions


def executor(db: tuple[Path, str, sessionmaker[Session]], name: str, **cfg: Any) -> Executor:
    folder, url, sessions = db
    config = load_config(write_config(folder, url, **cfg))
    return Executor(config, sessions, FakeDriver(config, sessions), name)


def book(sessions: sessionmaker[Session], count: int, prefix: str = "n", **attrs: Any) -> list[int]:
    with sessions() as s:
        s.add_all(Node(name=f"{prefix}{i}", ip="127.0.0.1", attrs=attrs) for i in range(count))
        s.commit()
    return [add_reservation(sessions, f"{prefix}{i}") for i in range(count)]


def present(sessions: sessionmaker[Session], name: str, seconds: float) -> None:
    """Another executor, seen alive for `seconds` more (negative: its presence expired)."""
    with sessions() as s:
        until = utcnow() + dt.timedelta(seconds=seconds)
        s.execute(insert(ExecutorPresence).values(name=name, seen_until=until))
        s.commit()


def holders(sessions: sessionmaker[Session]) -> list[str | None]:
    with sessions() as s:
        return sorted(s.scalars(select(Action.locked_by)), key=str)


async def stop(*executors: Executor) -> None:
    for ex in executors:
        await ex.drain()
        await ex.shutdown()


async def test_one_pass_claims_every_ready_action(db: Any) -> None:
    # 150 deployments due at once: one pass queues and claims them all (there was a cap of 100
    # per pass, so a thousand started in ten waves).
    rids = book(db[2], 150)
    ex = executor(db, "solo", max_concurrent_actions=1000)
    claimed = await ex.tick()
    assert len(claimed) == 150
    await stop(ex)
    assert {reservation(db[2], r).status for r in rids} == {"deployed"}


async def test_a_pass_claims_no_more_than_the_executor_has_room_for(db: Any) -> None:
    book(db[2], 12)
    ex = executor(db, "small", max_concurrent_actions=5)
    assert len(await ex.tick()) == 5
    await stop(ex)


async def test_executors_alive_take_fair_shares_of_a_backlog(db: Any) -> None:
    sessions = db[2]
    left = executor(db, "left", max_concurrent_actions=1000)
    right = executor(db, "right", max_concurrent_actions=1000)
    assert await right.tick() == []  # right is seen alive: left leaves it its share
    rids = book(sessions, 11, step_delay=0.3)
    mine = await left.tick()
    theirs = await right.tick()
    assert (len(mine), len(theirs)) == (6, 5)
    assert not set(mine) & set(theirs)
    await stop(left, right)
    assert {reservation(sessions, r).status for r in rids} == {"deployed"}
    with sessions() as s:
        assert s.scalars(select(ExecutorPresence.name)).all() == []  # both said they stopped


async def test_an_executor_whose_presence_expired_leaves_no_share(db: Any) -> None:
    sessions = db[2]
    present(sessions, "gone", -1.0)
    book(sessions, 10)
    ex = executor(db, "alive", max_concurrent_actions=1000)
    assert len(await ex.tick()) == 10
    await stop(ex)


async def test_actions_left_waiting_by_a_busy_peer_go_to_one_with_room(db: Any) -> None:
    # A peer seen alive that claims nothing (full, or stuck): its share waits at most the
    # patience (a third of the lease), then goes to the executor that has room.
    sessions = db[2]
    present(sessions, "busy", 60.0)
    book(sessions, 6, step_delay=3.0)
    ex = executor(db, "spare", max_concurrent_actions=1000, lease_seconds=3.0)
    assert len(await ex.tick()) == 3
    assert await ex.tick() == []  # its share is running; the rest is the peer's for now
    await asyncio.sleep(1.2)
    assert len(await ex.tick()) == 3
    assert holders(sessions) == ["spare"] * 6
    await stop(ex)


async def test_a_first_claim_commits_the_start_of_the_process_and_of_its_first_step(db: Any) -> None:
    # What the runner would commit first is committed with the claim: right after the pass, before
    # the runner ran anything, the action is running in its first step, with both events; an
    # executor that dies now resumes it at that step.
    sessions = db[2]
    (rid,) = book(sessions, 1, step_delay=0.2)
    ex = executor(db, "first", max_concurrent_actions=10)
    (action_id,) = await ex.tick()
    with sessions() as s:
        a = s.get(Action, action_id)
        assert a is not None
        assert (a.status, a.step_index, a.step_name, a.step_ran, a.locked_by) == (
            "running", 0, "prepare", False, "first"
        )
    assert messages(sessions, rid)[-2:] == ["deploy started", "prepare: started"]
    assert reservation(sessions, rid).status == "deploying"
    await stop(ex)
    assert messages(sessions, rid).count("prepare: started") == 1
    assert reservation(sessions, rid).status == "deployed"


def test_queued_deploys_map_to_their_reservations_with_the_models_defaults(db: Any) -> None:
    # PostgreSQL inserts them with one INSERT ... SELECT of an array, whose RETURNING comes in no
    # particular order: each id must still be its reservation's, in the order asked.
    sessions = db[2]
    rids = list(reversed(book(sessions, 5)))
    with write_session(sessions) as s:
        ids = queue_deploys(s, rids)
        s.add(Action(reservation_id=None, process="deploy"))  # the ORM's defaults, to compare with
    with sessions() as s:
        made = {a.id: a for a in s.scalars(select(Action))}
    orm = next(a for a in made.values() if a.reservation_id is None)
    assert len(ids) == len(set(ids)) == 5
    assert [made[i].reservation_id for i in ids] == rids
    columns = (
        "process", "status", "step_index", "step_name", "step_rebooted", "step_ran",
        "progress", "error", "args", "locked_by", "locked_until",
    )
    for i in ids:
        assert [getattr(made[i], c) for c in columns] == [getattr(orm, c) for c in columns]
        assert made[i].created_at is not None and made[i].step_started_at is not None
