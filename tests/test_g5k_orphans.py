"""Grid'5000 jobs are never left on a user's account (issue 11, #6): the agent API killed between
its booking's commit and storing OAR's job id, or an answer lost on the way, leaves a job that
PiSeduce finds again by its name (`piseduce-<agent>-r<reservation id>`), then attaches (deploy,
extend) or deletes (cancel, destroy, a booking rolled back)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import g5k_fixtures
from helpers.agent_helpers import free_port, headers, piseduce_cmd, subprocess_env, wait_http
from helpers.constants import TOKEN
from helpers.g5k_fixtures import USERS, Emulator
from piseduce.agent.drivers.g5k.driver import G5kDriver
from piseduce.config import AgentConfig, load_agent_config
from piseduce.crypto import encrypt_json, generate_key_file, load_fernet
from piseduce.sim.g5k.model import G5kSim
from test_g5k_driver import ALICE, KEY, make_config, run_process, view


def left_on_account(sim: G5kSim, user: str) -> list[Any]:
    """The user's jobs still holding nodes (not deleted, not over)."""
    return [j for j in sim.jobs.values()
            if j.user == user and j.deleted_at is None and sim.job_state(j) not in ("terminated", "error")]


# ---------------------------------------------------------------- the driver alone


async def test_a_job_whose_answer_was_lost_goes_with_the_rolled_back_booking(
    g5k_emulator: Emulator, tmp_path: Path
) -> None:
    driver = G5kDriver(make_config(g5k_emulator, tmp_path, g5k_api_attempts=1), None)  # type: ignore[arg-type]
    g5k_emulator.faults(drop_next=1)  # OAR accepts the job, the answer never arrives
    with pytest.raises(Exception, match="nothing was booked"):
        await driver.on_booked([view(41, "grisou-1")], ALICE)
    assert [j.name for j in g5k_emulator.sim.jobs.values()] == ["piseduce-g5k-test-r41"]
    assert left_on_account(g5k_emulator.sim, "alice") == []


async def test_extend_and_cancel_find_the_job_by_its_name(g5k_emulator: Emulator, tmp_path: Path) -> None:
    driver = G5kDriver(make_config(g5k_emulator, tmp_path), None)  # type: ignore[arg-type]
    r = view(42, "grisou-2", hours=2)
    state = (await driver.on_booked([r], ALICE))[42]  # ... and the API died before storing it
    for _ in range(100):
        if g5k_emulator.sim.job_state(g5k_emulator.sim.get_job(state["job_id"])) == "running":
            break
        await asyncio.sleep(0.02)
    update = await driver.on_extend(r, r.end, ALICE)
    assert update["job_id"] == state["job_id"] and update["job_name"] == "piseduce-g5k-test-r42"
    await driver.on_cancel(r, ALICE)
    assert left_on_account(g5k_emulator.sim, "alice") == []


async def test_a_booking_that_never_reached_grid5000_submits_at_deploy(
    g5k_emulator: Emulator, tmp_path: Path
) -> None:
    """Killed after the commit but before the submission: the deployment makes the job then."""
    driver = G5kDriver(make_config(g5k_emulator, tmp_path), None)  # type: ignore[arg-type]
    r = view(43, "grisou-3")
    r.params.update({"environment": "debian12-min", "ssh_keys": [KEY]})
    ctx = await run_process(driver, "deploy", r)
    (job,) = [j for j in g5k_emulator.sim.jobs.values() if j.user == "alice"]
    assert job.name == "piseduce-g5k-test-r43" and ctx.state["job_id"] == job.uid
    assert any("submitted now" in e for e in ctx.events)
    await run_process(driver, "destroy", r)
    assert left_on_account(g5k_emulator.sim, "alice") == []


# ---------------------------------------------------------------- a real kill -9 of the agent API


class KillAfterSubmit:
    """Around the emulator: the first job submission is processed, then the agent API process is
    killed with SIGKILL before OAR's answer goes back to it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pid: int | None = None
        self.killed = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        submit = scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/jobs")
        if not (submit and self.pid and not self.killed.is_set()):
            await self.app(scope, receive, send)
            return
        answer: list[Any] = []

        async def keep(message: Any) -> None:
            answer.append(message)

        await self.app(scope, receive, keep)  # the job exists on Grid'5000 now
        os.kill(self.pid, signal.SIGKILL)
        self.killed.set()
        for message in answer:
            await send(message)


@pytest.fixture
def killing_emulator(tmp_path: Path) -> Iterator[tuple[Emulator, KillAfterSubmit]]:
    from piseduce.sim.g5k.cli import load_users

    users_file = tmp_path / "g5k-users.json"
    users_file.write_text(json.dumps(USERS))
    sim = G5kSim("nancy", [("grisou", 4)], load_users(users_file), time_scale=g5k_fixtures.TIME_SCALE, seed=2)
    box: list[KillAfterSubmit] = []

    def wrap(app: Any) -> Any:
        box.append(KillAfterSubmit(app))
        return box[0]

    url, server, thread = g5k_fixtures.serve(sim, wrap)
    try:
        yield Emulator(sim, url, users_file), box[0]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def g5k_agent_config(folder: Path, emu: Emulator) -> AgentConfig:
    folder.mkdir(parents=True, exist_ok=True)
    generate_key_file(folder / "secret.key")
    data = {
        "auth_token": [TOKEN], "node_type": "g5k", "name": "g5k-nancy", "g5k_site": "nancy",
        "g5k_api_url": emu.url, "port_number": free_port(), "host": "127.0.0.1",
        "db_url": "sqlite:///agent.db", "timeout_scale": 0.01, "poll_interval": 0.05,
        "turnaround_minutes": 0, "inventory_refresh_seconds": 1, "g5k_status_cache_seconds": 0,
    }
    (folder / "config_agent.json").write_text(json.dumps(data))
    run = subprocess.run(piseduce_cmd("agent", "init-db", str(folder / "config_agent.json")),
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return load_agent_config(folder / "config_agent.json")


def alice_headers(config: AgentConfig) -> dict[str, str]:
    h = headers("alice@example.org")
    h["X-Piseduce-Credentials"] = encrypt_json(load_fernet(config.key_path), ALICE)
    return h


def book_and_get_killed(config: AgentConfig, killer: KillAfterSubmit, node: str) -> None:
    """`piseduce agent api` in a child process, killed -9 while it submits the OAR job."""
    log = open(config.base_dir / "api.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(piseduce_cmd("agent", "api", str(config.path)), env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{config.port_number}"
        wait_http(f"{base}/api/health", timeout=30)
        killer.killed.clear()
        killer.pid = proc.pid
        body = {"filters": [{"nodes": [node]}], "duration_hours": 2}
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{base}/api/reservations", json=body, headers=alice_headers(config), timeout=30)
        assert killer.killed.is_set()
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        killer.pid = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def wait_status(c: httpx.AsyncClient, rid: int, h: dict[str, str], want: set[str]) -> dict[str, Any]:
    for _ in range(600):
        body = (await c.get(f"/api/reservations/{rid}", headers=h)).json()
        if body["status"] in want:
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(body)


@pytest.mark.slow
async def test_killed_between_commit_and_job_id_nothing_is_left(
    killing_emulator: tuple[Emulator, KillAfterSubmit], tmp_path: Path
) -> None:
    from piseduce.agent.app import create_app
    from piseduce.agent.engine.executor import Executor

    emu, killer = killing_emulator
    config = g5k_agent_config(tmp_path / "agent", emu)
    # Two bookings, each one's API killed after OAR made its job and before the id was stored.
    book_and_get_killed(config, killer, "grisou-1")
    book_and_get_killed(config, killer, "grisou-2")
    jobs = {j.name: j for j in left_on_account(emu.sim, "alice")}
    assert sorted(jobs) == ["piseduce-g5k-nancy-r1", "piseduce-g5k-nancy-r2"]

    # The API is back (and an executor): the reservations were committed, without their job.
    app = create_app(config)
    state = app.state.agent
    stop = asyncio.Event()
    task = asyncio.create_task(Executor(config, state.sessions, state.driver, "g5k-exec").run_forever(stop))
    alice = alice_headers(config)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
            mine = (await c.get("/api/reservations", headers=alice)).json()
            assert sorted((r["id"], r["node"], r["status"]) for r in mine) == [
                (1, "grisou-1", "configuring"), (2, "grisou-2", "configuring")]

            # Deployed on the job its booking made (found again, attached), not on a second one.
            r = await c.post("/api/reservations/1/deploy", json={"environment": "debian12-min",
                                                                  "ssh_keys": [KEY]}, headers=alice)
            assert r.status_code == 202, r.text
            body = await wait_status(c, 1, alice, {"deployed", "failed"})
            assert body["status"] == "deployed", body
            assert any("found again and attached" in e["message"] for e in body["events"])
            assert len([j for j in emu.sim.jobs.values() if j.name == "piseduce-g5k-nancy-r1"]) == 1
            assert [d.nodes for d in emu.sim.deployments.values()] == [["grisou-1.nancy.grid5000.fr"]]

            # Given back before anything ran: its job is found by name and deleted.
            r = await c.post("/api/reservations/2/destroy", headers=alice)
            assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
            assert jobs["piseduce-g5k-nancy-r2"].deleted_at is not None

            # Destroyed after deploying: its (attached) job goes too.
            assert (await c.post("/api/reservations/1/destroy", headers=alice)).status_code == 202
            await wait_status(c, 1, alice, {"ended"})
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        state.engine.dispose()
    assert left_on_account(emu.sim, "alice") == []
