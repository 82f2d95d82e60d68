"""Group commit (agent/engine/group.py) as executor processes see it: an action never goes past a
transition that is not committed yet, even when an executor is killed with a batch in flight; and
two executors sharing a PostgreSQL database split the work, each step run exactly once."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from helpers.engine_fixtures import actions, fake_runs, migrated, postgres_database, sqlite_url, write_config
from helpers.executor_procs import DEPLOY_STEPS, RUN_EXECUTOR, output, setup_nodes, spawn, statuses
from helpers.waiting import wait_until_sync

__all__ = ["spawn"]  # the fixture, used by name

# Every COMMIT of the executor's engine waits this long first: a batch spends most of its life
# written but not committed, which is where a kill -9 lands.
COMMIT_DELAY = 0.3
SLOW_EXECUTOR = (
    "import sys, time; from sqlalchemy import event; import piseduce.db as db; make = db.make_engine\n"
    "def slow(url, **kw):\n"
    "    engine = make(url, **kw)\n"
    f"    event.listen(engine, 'commit', lambda conn: time.sleep({COMMIT_DELAY}))\n"
    "    return engine\n"
    "db.make_engine = slow\n" + RUN_EXECUTOR.replace("; ", "\n")
)


def runs_past_committed_step(sessions: sessionmaker[Session], rids: list[int], log: Path) -> list[str]:
    """The steps whose run() was called although the step's start was not committed: run() of a
    step comes after the commit that sets the action's step_index to it."""
    runs = fake_runs(log)
    bad = []
    for i, rid in enumerate(rids):
        (action,) = actions(sessions, rid)
        if action.status == "done":
            continue
        for index, step in enumerate(DEPLOY_STEPS):
            if runs[(f"n{i}", "deploy", step)] and index > action.step_index:
                bad.append(f"n{i}: {step} ran, committed step {action.step_index} ({action.status})")
    return bad


def test_kill_9_during_a_group_commit_leaves_no_action_past_an_uncommitted_transition(
    tmp_path: Path, spawn: Any
) -> None:
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        names, rids = setup_nodes(sessions, 30, step_delay=0.05)
        config = write_config(tmp_path, url, lease_seconds=1.5)
        log = tmp_path / "fake.log"
        slow = spawn(config, [sys.executable, "-c", SLOW_EXECUTOR, str(config)])
        # Past the first steps of most nodes: batches of many actions are being written.
        wait_until_sync(lambda: sum(fake_runs(log).values()) >= 45, 60, what="45 steps run")
        slow.send_signal(signal.SIGKILL)
        slow.wait(10)
        assert runs_past_committed_step(sessions, rids, log) == []
        held = [actions(sessions, r)[0] for r in rids]
        assert any(a.status == "running" for a in held), "the kill landed after every action finished"

        spawn(config)
        wait_until_sync(lambda: statuses(sessions, rids) == ["deployed"] * 30, 60, what="all deployed")
        runs = fake_runs(log)
        for n in names:
            # Each step ran, the interrupted one at most twice (its run() is repeated on resume).
            assert all(1 <= runs[(n, "deploy", s)] <= 2 for s in DEPLOY_STEPS), (n, runs)
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("PISEDUCE_PG_URL"), reason="PISEDUCE_PG_URL is not set")
def test_two_executors_on_postgres_share_the_work_each_step_once(tmp_path: Path, spawn: Any) -> None:
    with postgres_database() as url:
        engine, sessions = migrated(url)
        try:
            logs = []
            for name in ("a", "b"):
                folder = tmp_path / name
                folder.mkdir()
                # At most 20 actions each: 40 reservations need both executors.
                spawn(write_config(folder, url, lease_seconds=5, max_concurrent_actions=20))
                logs.append(folder / "fake.log")
            wait_until_sync(lambda: output(tmp_path).count(" started (lease ") == 2, 60, what="both started")
            names, rids = setup_nodes(sessions, 40, step_delay=0.25)
            wait_until_sync(lambda: statuses(sessions, rids) == ["deployed"] * 40, 120, what="all deployed")
            a, b = (fake_runs(p) for p in logs)
            assert a and b, "one executor ran everything"
            assert a + b == Counter({(n, "deploy", s): 1 for n in names for s in DEPLOY_STEPS})
            assert not set(a) & set(b)
        finally:
            engine.dispose()
