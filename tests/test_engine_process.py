"""The executor as separate processes on one database: kill -9 and resume, clean stop on SIGTERM,
two executors at once (SQLite file, and PostgreSQL when PISEDUCE_PG_URL is set), the CLI."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.engine_fixtures import (
    actions,
    events,
    fake_runs,
    messages,
    migrated,
    postgres_database,
    sqlite_url,
    write_config,
)
from helpers.executor_procs import DEPLOY_STEPS, output, setup_nodes, spawn, statuses
from helpers.waiting import wait_until_sync

__all__ = ["spawn"]  # the fixture, used by name


def test_kill_9_then_another_executor_resumes_at_the_interrupted_step(tmp_path: Path, spawn: Any) -> None:
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        names, rids = setup_nodes(sessions, 3, step_delay=1.2)
        config = write_config(tmp_path, url, lease_seconds=1.5)
        log = tmp_path / "fake.log"
        first = spawn(config)
        wait_until_sync(lambda: all(fake_runs(log)[(n, "deploy", "install")] == 1 for n in names), 20)
        first.send_signal(signal.SIGKILL)
        first.wait(5)

        held = [actions(sessions, r)[0] for r in rids]
        assert all(a.locked_by is not None and a.status == "running" for a in held)
        assert {(a.step_name, a.step_ran) for a in held} == {("install", False)}
        lease_end = max(a.locked_until for a in held if a.locked_until is not None)

        spawn(config)
        wait_until_sync(lambda: statuses(sessions, rids) == ["deployed"] * 3, 20)
        runs = fake_runs(log)
        for n in names:
            # Completed steps are not run again; the interrupted one is, once.
            assert [runs[(n, "deploy", s)] for s in DEPLOY_STEPS] == [1, 1, 2, 1], runs
        for rid in rids:
            msgs = messages(sessions, rid)
            resumed = [m for m in msgs if m.startswith("deploy resumed by executor ")]
            assert len(resumed) == 1 and resumed[0].endswith(" at step 'install'")
            expected = ["the reservation starts: deployment queued", "deploy started"]
            for step in ("prepare", "boot"):
                expected += [f"{step}: started", f"{step}: done"]
            expected += ["install: started", resumed[0], "install: done"]
            expected += ["connect: started", "connect: done", "deploy finished"]
            assert msgs == expected
            resume_time = next(e.time for e in events(sessions, rid) if e.message == resumed[0])
            assert resume_time >= lease_end  # the second executor waited for the lease to expire
    finally:
        engine.dispose()


def test_sigterm_stops_cleanly_and_releases_the_leases(tmp_path: Path, spawn: Any) -> None:
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        _, (rid,) = setup_nodes(sessions, 1, step_delay=1.5)
        # A long lease: the next executor only resumes at once if the lease was released.
        config = write_config(tmp_path, url, lease_seconds=60)
        log = tmp_path / "fake.log"
        first = spawn(config)
        wait_until_sync(lambda: fake_runs(log)[("n0", "deploy", "boot")] == 1, 20)
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0, output(tmp_path)
        (action,) = actions(sessions, rid)
        assert (action.status, action.locked_by, action.step_name, action.step_ran) == (
            "running", None, "boot", False
        )
        assert "1 actions released" in output(tmp_path)

        t0 = time.monotonic()
        spawn(config)
        wait_until_sync(lambda: statuses(sessions, [rid]) == ["deployed"], 20)
        assert time.monotonic() - t0 < 15
        assert [fake_runs(log)[("n0", "deploy", s)] for s in DEPLOY_STEPS] == [1, 2, 1, 1]
    finally:
        engine.dispose()


def _two_executors(tmp_path: Path, url: str, spawn: Any) -> None:
    engine, sessions = migrated(url)
    try:
        names, rids = setup_nodes(sessions, 8, step_delay=0.2)
        config = write_config(tmp_path, url, lease_seconds=2)
        spawn(config)
        spawn(config)
        wait_until_sync(lambda: statuses(sessions, rids) == ["deployed"] * 8, 30)
        runs = fake_runs(tmp_path / "fake.log")
        assert runs == {(n, "deploy", s): 1 for n in names for s in DEPLOY_STEPS}, runs
        for rid in rids:
            msgs = messages(sessions, rid)
            assert msgs.count("deploy started") == 1
            assert not any("resumed" in m for m in msgs)
    finally:
        engine.dispose()


def test_two_executor_processes_run_each_step_once_sqlite(tmp_path: Path, spawn: Any) -> None:
    _two_executors(tmp_path, sqlite_url(tmp_path), spawn)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("PISEDUCE_PG_URL"), reason="PISEDUCE_PG_URL is not set")
def test_two_executor_processes_run_each_step_once_postgres(tmp_path: Path, spawn: Any) -> None:
    with postgres_database() as url:
        _two_executors(tmp_path, url, spawn)


def test_piseduce_agent_exec_command(tmp_path: Path, spawn: Any) -> None:
    exe = shutil.which("piseduce", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the piseduce console script is not installed")
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        _, (rid,) = setup_nodes(sessions, 1)
        config = write_config(tmp_path, url)
        proc = spawn(config, [exe, "agent", "exec", str(config)])
        wait_until_sync(lambda: statuses(sessions, [rid]) == ["deployed"], 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, output(tmp_path)
    finally:
        engine.dispose()
