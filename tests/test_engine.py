"""The executor in-process: steps and events, timeouts, the automatic reboot, failure isolation,
expiry, credentials, progress, leases, concurrency and resuming after a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from helpers.clock_helpers import FakeClock
from helpers.engine_fixtures import (
    actions,
    add_node,
    add_reservation,
    events,
    fake_runs,
    load_config,
    messages,
    migrated,
    postgres_database,
    reservation,
    sqlite_url,
    write_config,
)
from helpers.fake_driver import FakeDriver
from helpers.waiting import wait_until
from piseduce.agent import lease
from piseduce.agent.clock import SYSTEM, Clock
from piseduce.agent.drivers.base import Driver, Process, Step, StepContext, StepError
from piseduce.agent.engine.executor import Executor
from piseduce.agent.models import Action, Node, Reservation, utcnow
from piseduce.crypto import encrypt_json, generate_key_file, load_fernet

DEPLOY_STEPS = ("prepare", "boot", "install", "connect")


@dataclass
class Db:
    folder: Path
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def log(self) -> Path:
        return self.folder / "fake.log"


PG = pytest.param(
    "postgres",
    marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not os.environ.get("PISEDUCE_PG_URL"), reason="PISEDUCE_PG_URL is not set"),
    ],
)


# The tests whose subject is the database's behaviour (locks, leases, concurrent writers) also run
# on PostgreSQL; the others test driver-facing logic that does not depend on the database.
ALSO_ON_POSTGRES = {
    "test_deploy_runs_each_step_once_and_commits_every_transition_with_an_event",
    "test_expired_reservation_is_destroyed_and_its_node_released",
    "test_expiry_supersedes_a_running_deploy",
    "test_a_lease_is_claimed_by_one_executor_only_until_it_expires",
    "test_an_action_taken_away_is_stopped_by_the_lease_renewal",
    "test_clean_stop_releases_leases_and_the_next_executor_resumes_the_interrupted_step",
    "test_two_executors_share_the_work_and_run_each_step_once",
    "test_nodes_advance_concurrently",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_kind" in metafunc.fixturenames:
        kinds = ["sqlite", PG] if metafunc.function.__name__ in ALSO_ON_POSTGRES else ["sqlite"]
        metafunc.parametrize("db_kind", kinds)


@pytest.fixture
def db(db_kind: str, tmp_path: Path) -> Iterator[Db]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database()) if db_kind == "postgres" else sqlite_url(tmp_path)
        engine, sessions = migrated(url)
        stack.callback(engine.dispose)
        yield Db(tmp_path, url, engine, sessions)


def make_executor(
    db: Db, name: str = "ex-1", driver_cls: type[Driver] = FakeDriver, clock: Clock = SYSTEM, **cfg: Any
) -> Executor:
    config = load_config(write_config(db.folder, db.url, **cfg))
    return Executor(config, db.sessions, driver_cls(config, db.sessions), name, clock=clock)


@pytest.fixture
async def running(db: Db) -> AsyncIterator[Any]:
    """Start executors with run_forever; all are stopped at the end of the test."""
    started: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(ex: Executor) -> asyncio.Event:
        stop = asyncio.Event()
        started.append((stop, asyncio.create_task(ex.run_forever(stop))))
        return stop

    yield start
    for stop, task in started:
        stop.set()
    await asyncio.wait_for(asyncio.gather(*(t for _, t in started)), 20)


def status(db: Db, rid: int) -> str:
    return reservation(db.sessions, rid).status


async def run_once(ex: Executor) -> list[int]:
    claimed = await ex.tick()
    await ex.drain()
    return claimed


# ---------------------------------------------------------------- the normal path


async def test_deploy_runs_each_step_once_and_commits_every_transition_with_an_event(db: Db) -> None:
    add_node(db.sessions, "n1")
    rid = add_reservation(db.sessions, "n1")
    ex = make_executor(db)
    claimed = await run_once(ex)
    await ex.shutdown()

    assert len(claimed) == 1
    r = reservation(db.sessions, rid)
    assert r.status == "deployed"
    assert r.error == ""
    assert r.connection["ssh"] == "ssh root@n1"
    (action,) = actions(db.sessions, rid)
    assert (action.process, action.status, action.progress) == ("deploy", "done", 100)
    assert action.locked_by is None and action.locked_until is None
    assert fake_runs(db.log) == {("n1", "deploy", s): 1 for s in DEPLOY_STEPS}
    expected = ["the reservation starts: deployment queued", "deploy started"]
    for step in DEPLOY_STEPS:
        expected += [f"{step}: started", f"{step}: done"]
    expected += ["deploy finished"]
    assert messages(db.sessions, rid) == expected
    evs = events(db.sessions, rid)
    assert [e.step for e in evs if e.message.startswith("boot:")] == ["boot"] * 2
    assert all(e.action_id == action.id for e in evs)
    assert [e.time for e in evs] == sorted(e.time for e in evs)


async def test_future_reservation_is_not_deployed_before_its_start(db: Db) -> None:
    add_node(db.sessions, "n1")
    rid = add_reservation(db.sessions, "n1", start=utcnow() + dt.timedelta(hours=1))
    cfg_rid = add_reservation(db.sessions, "n1", status="configuring", start=utcnow() + dt.timedelta(hours=3))
    ex = make_executor(db)
    assert await run_once(ex) == []
    await ex.shutdown()
    assert status(db, rid) == "scheduled"
    assert status(db, cfg_rid) == "configuring"
    assert actions(db.sessions, rid) == []


# ---------------------------------------------------------------- timeouts and the automatic reboot


async def test_hung_steps_fail_after_fail_after_with_a_readable_reason(db: Db) -> None:
    # timeout_scale 0.05: boot reboots after 0.1 s and fails 0.2 s later; install fails after 1.5 s.
    # Time stands still while a step works and moves on while the steps only wait: no waiting out.
    clock = FakeClock()
    add_node(db.sessions, "a", behavior="hang", behavior_step="boot")
    add_node(db.sessions, "b", behavior="hang", behavior_step="install")
    ra = add_reservation(db.sessions, "a", start=clock.now() - dt.timedelta(seconds=1))
    rb = add_reservation(db.sessions, "b", start=clock.now() - dt.timedelta(seconds=1))
    ex = make_executor(db, timeout_scale=0.05, clock=clock)
    await ex.tick()
    await clock.run(ex.action_tasks, step=0.05)
    await ex.drain()
    await ex.shutdown()

    a, b = reservation(db.sessions, ra), reservation(db.sessions, rb)
    assert a.status == b.status == "failed"
    assert a.error == "boot: no result after 0.2 s (even after an automatic hard reboot)"
    assert b.error == "install: no result after 1.5 s"
    (action_b,) = actions(db.sessions, rb)
    assert action_b.status == "failed" and action_b.error == b.error and action_b.locked_by is None
    runs = fake_runs(db.log)
    assert runs[("a", "deploy", "hard_reboot")] == 1
    assert runs[("a", "deploy", "boot")] == 2  # the step started over after the reboot
    assert runs[("a", "deploy", "install")] == runs[("b", "deploy", "connect")] == 0
    ev_b = events(db.sessions, rb)
    failed = next(e for e in ev_b if e.level == "error")
    assert failed.message == b.error and failed.step == "install"
    assert (failed.time - action_b.step_started_at).total_seconds() >= 1.5
    assert not any(m.startswith("install: no answer") for m in messages(db.sessions, rb))  # no reboot_after
    assert any(
        m.startswith("boot: no answer after ") and m.endswith(" s: automatic hard reboot")
        for m in messages(db.sessions, ra)
    )


async def test_need_reboot_gets_exactly_one_hard_reboot_then_deploys(db: Db) -> None:
    clock = FakeClock()
    add_node(db.sessions, "n1", behavior="need_reboot")
    rid = add_reservation(db.sessions, "n1", start=clock.now() - dt.timedelta(seconds=1))
    ex = make_executor(db, timeout_scale=0.05, clock=clock)
    await ex.tick()
    await clock.run(ex.action_tasks, step=0.05)
    await ex.drain()
    await ex.shutdown()

    r = reservation(db.sessions, rid)
    assert r.status == "deployed", r.error
    assert r.driver_state["hard_reboots"] == 1  # the state hard_reboot() changed is persisted
    runs = fake_runs(db.log)
    assert runs[("n1", "deploy", "hard_reboot")] == 1
    assert runs[("n1", "deploy", "boot")] == 2
    msgs = messages(db.sessions, rid)
    assert sum("automatic hard reboot" in m for m in msgs) == 1
    assert "boot: node rebooted, the step starts over" in msgs
    assert msgs.index("boot: node rebooted, the step starts over") < msgs.index("boot: done")


class TwoRebootDriver(FakeDriver):
    """Two steps that each answer only after one more hard reboot: the reboot allowance is per step."""

    def processes(self) -> dict[str, Process]:
        def waits_for(n: int) -> Any:
            async def done(ctx: StepContext) -> bool:
                return int(ctx.state.get("hard_reboots", 0)) >= n

            return done

        async def run(ctx: StepContext) -> None:
            return None

        steps = (
            Step("first", run, waits_for(1), reboot_after=0.1, fail_after=2, poll=0.02),
            Step("second", run, waits_for(2), reboot_after=0.1, fail_after=2, poll=0.02),
        )
        return {**super().processes(), "deploy": Process("deploy", steps)}


async def test_the_reboot_allowance_resets_for_each_step(db: Db) -> None:
    clock = FakeClock()
    add_node(db.sessions, "n1")
    rid = add_reservation(db.sessions, "n1", start=clock.now() - dt.timedelta(seconds=1))
    ex = make_executor(db, driver_cls=TwoRebootDriver, clock=clock)
    await ex.tick()
    await clock.run(ex.action_tasks, step=0.05)  # time moves only while the step waits on it
    await ex.drain()
    await ex.shutdown()
    assert clock.monotonic() < 2  # each step rebooted after its 0.1 s, well before its fail_after
    r = reservation(db.sessions, rid)
    assert r.status == "deployed", r.error
    assert fake_runs(db.log)[("n1", "deploy", "hard_reboot")] == 2


# ---------------------------------------------------------------- failures stay local


async def test_a_failing_node_does_not_stop_its_neighbours_or_the_executor(db: Db, running: Any) -> None:
    behaviours: dict[str, dict[str, Any]] = {
        "n0": {},
        "n1": {"behavior": "raise", "behavior_step": "install"},
        "n2": {"behavior": "crash", "behavior_step": "prepare"},
        "n3": {"step_delay": 0.2},
        "n4": {},
    }
    rids = {}
    for name, attrs in behaviours.items():
        add_node(db.sessions, name, **attrs)
        rids[name] = add_reservation(db.sessions, name)
    running(make_executor(db))

    final = ("deployed", "failed")
    await wait_until(lambda: all(status(db, r) in final for r in rids.values()), 15)
    got = {n: status(db, r) for n, r in rids.items()}
    assert got == {"n0": "deployed", "n1": "failed", "n2": "failed", "n3": "deployed", "n4": "deployed"}
    assert reservation(db.sessions, rids["n1"]).error == "install broke on n1"
    assert reservation(db.sessions, rids["n2"]).error == "prepare: unexpected crash on n2"
    # The executor is still alive: a new booking is deployed by the same run.
    add_node(db.sessions, "n5")
    r5 = add_reservation(db.sessions, "n5")
    await wait_until(lambda: status(db, r5) == "deployed", 10)


# ---------------------------------------------------------------- expiry


async def test_expired_reservation_is_destroyed_and_its_node_released(db: Db) -> None:
    generate_key_file(db.folder / "secret.key")
    token = encrypt_json(load_fernet(db.folder / "secret.key"), {"user": "alice", "password": "pw-123456"})
    add_node(db.sessions, "n1")
    rid = add_reservation(
        db.sessions, "n1", status="deployed", start=utcnow() - dt.timedelta(hours=2), credentials=token
    )
    ex = make_executor(db)
    await run_once(ex)

    r = reservation(db.sessions, rid)
    assert r.status == "ended"
    assert r.credentials is None
    (destroy,) = actions(db.sessions, rid)
    assert (destroy.process, destroy.status) == ("destroy", "done")
    assert fake_runs(db.log) == {("n1", "destroy", "wipe"): 1, ("n1", "destroy", "power_off"): 1}
    msgs = messages(db.sessions, rid)
    assert msgs[0].startswith("the reservation ended at ") and msgs[-1] == "destroy finished"
    with db.sessions() as s:
        node = s.get(Node, "n1")
        assert node is not None and node.status == "available"

    # The node is free: a new booking on it is deployed.
    new = add_reservation(db.sessions, "n1")
    await run_once(ex)
    await ex.shutdown()
    assert status(db, new) == "deployed"
    assert status(db, rid) == "ended"


async def test_expiry_supersedes_a_running_deploy(db: Db, running: Any) -> None:
    clock = FakeClock()
    add_node(db.sessions, "n1", behavior="hang", behavior_step="boot")
    start = clock.now() - dt.timedelta(seconds=1)
    rid = add_reservation(db.sessions, "n1", start=start, hours=1.5 / 3600)  # ends in 0.5 s
    running(make_executor(db, timeout_scale=50, clock=clock))
    await wait_until(lambda: any(m == "boot: waiting for the result" for m in messages(db.sessions, rid)), 5)
    assert status(db, rid) == "deploying"
    clock.advance(1.0)  # the slot is over: the next scheduling pass destroys
    await wait_until(lambda: status(db, rid) == "ended", 10)

    deploy, destroy = actions(db.sessions, rid)
    assert (deploy.process, deploy.status) == ("deploy", "cancelled")
    assert (destroy.process, destroy.status) == ("destroy", "done")
    clock.advance(1.0)
    await asyncio.sleep(0.3)
    runs = fake_runs(db.log)
    assert runs[("n1", "deploy", "install")] == 0  # the hung deploy never went on
    assert runs[("n1", "destroy", "wipe")] == 1
    assert "deploy cancelled by destroy" in messages(db.sessions, rid)


class RecordingDriver(FakeDriver):
    cancelled: list[tuple[int, dict[str, str] | None]] = []

    async def on_cancel(self, reservation: Any, credentials: Any) -> None:
        self.cancelled.append((reservation.id, dict(credentials) if credentials else None))


async def test_unconfigured_reservation_past_its_end_is_cancelled(db: Db) -> None:
    generate_key_file(db.folder / "secret.key")
    token = encrypt_json(load_fernet(db.folder / "secret.key"), {"user": "bob", "password": "pw-abcdef"})
    add_node(db.sessions, "n1")
    rid = add_reservation(
        db.sessions, "n1", status="configuring", start=utcnow() - dt.timedelta(hours=2), credentials=token
    )
    RecordingDriver.cancelled = []
    ex = make_executor(db, driver_cls=RecordingDriver)
    await run_once(ex)
    await ex.shutdown()
    r = reservation(db.sessions, rid)
    assert r.status == "cancelled" and r.credentials is None
    assert actions(db.sessions, rid) == []
    assert RecordingDriver.cancelled == [(rid, {"user": "bob", "password": "pw-abcdef"})]
    assert fake_runs(db.log) == {}


async def test_failed_destroy_ends_the_reservation_and_marks_the_node_broken(db: Db) -> None:
    add_node(db.sessions, "n1", behavior="raise", behavior_step="wipe")
    rid = add_reservation(db.sessions, "n1", status="deployed", start=utcnow() - dt.timedelta(hours=2))
    ex = make_executor(db)
    await run_once(ex)
    await ex.shutdown()
    r = reservation(db.sessions, rid)
    assert r.status == "ended"
    assert r.error == "wipe broke on n1"
    with db.sessions() as s:
        node = s.get(Node, "n1")
        assert node is not None and node.status == "broken"
    assert any("marked broken" in m for m in messages(db.sessions, rid))

    # Nobody gets the dirty node: the next booking of it fails at once with the reason.
    ex = make_executor(db)
    nxt = add_reservation(db.sessions, "n1")
    await run_once(ex)
    await ex.shutdown()
    r = reservation(db.sessions, nxt)
    assert r.status == "failed"
    assert r.error.startswith("n1 is broken: it cannot be deployed")
    assert actions(db.sessions, nxt) == []
    assert fake_runs(db.log)[("n1", "deploy", "prepare")] == 0


# ---------------------------------------------------------------- what steps see and report


class ProbeDriver(FakeDriver):
    seen: list[dict[str, Any]] = []

    def processes(self) -> dict[str, Process]:
        sessions = self.sessions

        def db_row(ctx: StepContext) -> tuple[dict[str, Any], int]:
            with sessions() as s:
                r = s.get(Reservation, ctx.reservation.id)
                a = s.scalars(select(Action).where(Action.reservation_id == ctx.reservation.id)).one()
                assert r is not None
                return dict(r.driver_state), a.progress

        async def submit(ctx: StepContext) -> None:
            ProbeDriver.seen.append({"credentials": ctx.credentials, "process": ctx.process})
            ctx.state["job"] = 42

        async def submitted(ctx: StepContext) -> bool:
            state, _ = db_row(ctx)
            ProbeDriver.seen.append({"state_in_db": state})
            return True

        async def install(ctx: StepContext) -> None:
            await ctx.progress(50, "half of the image written")
            ProbeDriver.seen.append({"progress_in_db": db_row(ctx)[1]})
            await ctx.log("checksum verified", "warning")
            await ctx.save_node_attrs(host_key="ssh-ed25519 AAAA")

        steps = (Step("submit", submit, submitted, weight=1), Step("install", install, weight=3))
        return {**super().processes(), "deploy": Process("deploy", steps)}


async def test_steps_get_credentials_and_their_state_progress_and_logs_are_committed(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    generate_key_file(db.folder / "secret.key")
    secret = "very-secret-password-77"
    token = encrypt_json(load_fernet(db.folder / "secret.key"), {"user": "carol", "password": secret})
    add_node(db.sessions, "n1")
    rid = add_reservation(db.sessions, "n1", credentials=token)
    ProbeDriver.seen = []
    ex = make_executor(db, driver_cls=ProbeDriver)
    await run_once(ex)
    await ex.shutdown()

    r = reservation(db.sessions, rid)
    assert r.status == "deployed", r.error
    assert ProbeDriver.seen[0] == {"credentials": {"user": "carol", "password": secret}, "process": "deploy"}
    assert ProbeDriver.seen[1] == {"state_in_db": {"job": 42}}  # persisted after run(), before done()
    assert ProbeDriver.seen[2] == {"progress_in_db": 62}  # (1 + 3 * 50 %) / 4 weights
    assert r.driver_state == {"job": 42}
    evs = events(db.sessions, rid)
    half = next(e for e in evs if e.message == "half of the image written")
    assert half.step == "install"
    assert any(e.message == "checksum verified" and e.level == "warning" for e in evs)
    with db.sessions() as s:
        node = s.get(Node, "n1")
        assert node is not None and node.attrs["host_key"] == "ssh-ed25519 AAAA"
    assert secret not in caplog.text
    assert r.credentials == token  # kept while the reservation lives


# ---------------------------------------------------------------- leases


async def test_a_lease_is_claimed_by_one_executor_only_until_it_expires(db: Db) -> None:
    add_node(db.sessions, "n1")
    rid = add_reservation(db.sessions, "n1", status="deploying")
    with db.sessions() as s:
        a = Action(reservation_id=rid, process="deploy")
        s.add(a)
        s.commit()
        aid = a.id
    now = utcnow()
    with db.sessions.begin() as s:
        assert lease.claimable(s, now, 10) == [aid]
        assert lease.claim(s, aid, "one", now, 5)
        assert not lease.claim(s, aid, "two", now, 5)
        assert lease.claimable(s, now, 10) == []
        assert lease.renew(s, [aid], "two", now, 5) == set()
        assert lease.renew(s, [aid], "one", now, 5) == {aid}
    later = now + dt.timedelta(seconds=6)
    with db.sessions.begin() as s:
        assert lease.claim(s, aid, "two", later, 5)  # expired: taken over
        assert lease.release(s, "one") == 0
        assert lease.release(s, "two") == 1
        assert lease.claim(s, aid, "three", later, 5)


async def test_an_action_taken_away_is_stopped_by_the_lease_renewal(db: Db, running: Any) -> None:
    add_node(db.sessions, "n1", behavior="hang", behavior_step="boot")
    rid = add_reservation(db.sessions, "n1")
    clock = FakeClock()
    ex = make_executor(db, timeout_scale=50, lease_seconds=0.6, clock=clock)
    running(ex)
    await wait_until(lambda: "boot: waiting for the result" in messages(db.sessions, rid), 5)
    (action,) = actions(db.sessions, rid)
    assert ex.running == [action.id]
    with db.sessions() as s:  # another executor took it over (its clock ran ahead, say)
        row = s.get(Action, action.id)
        assert row is not None
        row.locked_by = "someone-else"
        row.locked_until = utcnow() + dt.timedelta(hours=1)
        s.commit()
    assert ex.running == [action.id]  # nothing renews while time stands still
    clock.advance(0.2)  # a third of the lease: the renewal finds the lease gone
    await wait_until(lambda: ex.running == [], 2)
    (action,) = actions(db.sessions, rid)
    assert (action.status, action.locked_by) == ("running", "someone-else")  # left untouched
    assert status(db, rid) == "deploying"


async def test_an_unknown_process_fails_its_action_only(db: Db) -> None:
    add_node(db.sessions, "n1")
    rid = add_reservation(db.sessions, "n1", status="deployed")
    with db.sessions() as s:
        s.add(Action(reservation_id=rid, process="frobnicate"))
        s.commit()
    ex = make_executor(db)
    await run_once(ex)
    await ex.shutdown()
    (action,) = actions(db.sessions, rid)
    assert (action.status, action.error) == ("failed", "unknown process 'frobnicate' for raspberry nodes")
    assert status(db, rid) == "deployed"


async def test_clean_stop_releases_leases_and_the_next_executor_resumes_the_interrupted_step(
    db: Db, running: Any
) -> None:
    add_node(db.sessions, "n1", step_delay=0.4)
    rid = add_reservation(db.sessions, "n1")
    stop = running(make_executor(db, name="first"))
    await wait_until(lambda: fake_runs(db.log)[("n1", "deploy", "install")] == 1, 10)
    stop.set()
    await wait_until(lambda: actions(db.sessions, rid)[0].locked_by is None, 5)
    (action,) = actions(db.sessions, rid)
    assert (action.status, action.step_name, action.step_ran) == ("running", "install", False)

    second = make_executor(db, name="second")
    assert await second.tick() == [action.id]  # no lease to wait for
    await second.drain()
    await second.shutdown()
    assert status(db, rid) == "deployed"
    runs = fake_runs(db.log)
    assert [runs[("n1", "deploy", s)] for s in DEPLOY_STEPS] == [1, 1, 2, 1]
    assert "deploy resumed by executor second at step 'install'" in messages(db.sessions, rid)


async def test_two_executors_share_the_work_and_run_each_step_once(db: Db, running: Any) -> None:
    names = [f"n{i}" for i in range(8)]
    rids = []
    for name in names:
        add_node(db.sessions, name, step_delay=0.1)
        rids.append(add_reservation(db.sessions, name))
    other_engine, other_sessions = migrated(db.url)
    try:
        running(make_executor(db, name="left"))
        config = load_config(db.folder / "config_agent.json")
        running(Executor(config, other_sessions, FakeDriver(config, other_sessions), "right"))
        await wait_until(lambda: all(status(db, r) == "deployed" for r in rids), 20)
    finally:
        other_engine.dispose()
    runs = fake_runs(db.log)
    assert runs == {(n, "deploy", s): 1 for n in names for s in DEPLOY_STEPS}


# ---------------------------------------------------------------- concurrency


async def test_nodes_advance_concurrently(db: Db, running: Any) -> None:
    # Each node: three steps sleeping 0.5 s. In lock-step or one by one, 20 nodes would take 20x.
    add_node(db.sessions, "solo", step_delay=0.5)
    solo = add_reservation(db.sessions, "solo")
    running(make_executor(db))
    t0 = time.monotonic()
    await wait_until(lambda: status(db, solo) == "deployed", 10, interval=0.02)
    one = time.monotonic() - t0

    rids = []
    for i in range(20):
        add_node(db.sessions, f"c{i}", step_delay=0.5)
    t0 = time.monotonic()
    for i in range(20):
        rids.append(add_reservation(db.sessions, f"c{i}"))
    await wait_until(lambda: all(status(db, r) == "deployed" for r in rids), 30, interval=0.05)
    twenty = time.monotonic() - t0
    assert twenty < 2.5 * one + 1.0, (one, twenty)


# ---------------------------------------------------------------- budgets that follow the reservation


class SizedDriver(FakeDriver):
    """One step that takes `work` seconds; its budget is `size` seconds, read from the node."""

    def processes(self) -> dict[str, Process]:
        async def write(ctx: StepContext) -> None:
            await asyncio.sleep(float(ctx.node.attrs["work"]))

        def budget(ctx: StepContext) -> float:
            if "size" not in ctx.node.attrs:
                raise StepError(f"no size known for the image of {ctx.node.name}")
            return float(ctx.node.attrs["size"])

        steps = (Step("write", write, fail_after=0.2, budget=budget),)
        return {**super().processes(), "deploy": Process("deploy", steps)}


async def test_the_budget_replaces_fail_after_per_reservation(db: Db) -> None:
    add_node(db.sessions, "small", work=0.1, size=0.4)
    add_node(db.sessions, "big", work=0.6, size=1.5)  # longer than the static 0.2 s: its budget allows it
    add_node(db.sessions, "stuck", work=5, size=0.3)
    add_node(db.sessions, "unknown", work=0.1)
    rids = {n: add_reservation(db.sessions, n) for n in ("small", "big", "stuck", "unknown")}
    ex = make_executor(db, driver_cls=SizedDriver)
    await run_once(ex)
    await ex.shutdown()
    got = {n: reservation(db.sessions, rid) for n, rid in rids.items()}
    assert got["small"].status == got["big"].status == "deployed", (got["big"].error,)
    assert got["stuck"].status == "failed" and got["stuck"].error == "write: no result after 0.3 s"
    assert got["unknown"].status == "failed"
    assert got["unknown"].error == "no size known for the image of unknown"
