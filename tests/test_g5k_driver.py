"""The g5k driver against the Grid'5000 API emulator started by the test: inventory, booking
(exact host lists, OAR refusals, rollback), Kadeploy deployments (OK and KO), destroy, extend,
credentials, 5xx periods; first through the driver's own functions, then through the real
agent API and executor."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.clock_helpers import FakeClock
from helpers.g5k_fixtures import USERS, Emulator
from piseduce.agent.drivers.base import (
    ActionRefused,
    BookingRefused,
    CredentialsRequired,
    DriverError,
    InvalidParams,
    NodeView,
    ReservationView,
    StepContext,
    StepError,
)
from piseduce.agent.drivers.g5k.driver import G5kDriver
from piseduce.config import AgentConfig
from piseduce.sim.g5k.oar import SITE_TZ

ALICE = {"user": "alice", "password": USERS["alice"]}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVtdWxhdG9yLXRlc3Qta2V5LWZvci1waXNlZHVjZQ alice@laptop"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_config(emu: Emulator, tmp_path: Path, **extra: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "auth_token": ["g5k-test-token-0123456789"],
        "node_type": "g5k",
        "g5k_site": "nancy",
        "g5k_api_url": emu.url,
        "name": "g5k-test",
        "timeout_scale": 0.01,
        "inventory_refresh_seconds": 1,
        "g5k_status_cache_seconds": 0,
        "path": tmp_path / "config_agent.json",
        **extra,
    }
    return AgentConfig.model_validate(data)


@pytest.fixture
def driver(g5k_emulator: Emulator, tmp_path: Path) -> G5kDriver:
    return G5kDriver(make_config(g5k_emulator, tmp_path), None)  # type: ignore[arg-type]


def view(rid: int, node: str, *, start: dt.datetime | None = None, hours: float = 1.0) -> ReservationView:
    start = start or utcnow()
    fqdn = f"{node}.nancy.grid5000.fr"
    return ReservationView(
        id=rid,
        node=NodeView(name=node, ip=fqdn, properties={"cluster": node.split("-")[0]}, attrs={"fqdn": fqdn}),
        owner="alice@example.org",
        bin="exp",
        start=start,
        end=start + dt.timedelta(hours=hours),
        status="configuring",
    )


class Ctx(StepContext):
    def __init__(self, reservation: ReservationView, config: AgentConfig, process: str, creds: Any) -> None:
        self.reservation = reservation
        self.config = config
        self.process = process
        self.args = {}
        self.credentials = creds
        self.events: list[str] = []
        self.progresses: list[tuple[int, str | None]] = []

    async def progress(self, percent: int, message: str | None = None) -> None:
        self.progresses.append((percent, message))

    async def log(self, message: str, level: str = "info") -> None:
        self.events.append(message)

    async def save_node_attrs(self, **attrs: Any) -> None:
        self.reservation.node.attrs.update(attrs)


async def run_process(
    driver: G5kDriver, name: str, r: ReservationView, creds: Any = ALICE, timeout: float = 20.0
) -> Ctx:
    """What the engine does, minus the database: run, then poll done, step by step, in time."""
    ctx = Ctx(r, driver.config, name, creds)
    async with asyncio.timeout(timeout):
        for step in driver.processes()[name].steps:
            async with asyncio.timeout(step.fail_after):
                await step.run(ctx)
                if step.done is not None:
                    while not await step.done(ctx):
                        await asyncio.sleep(step.poll)
    return ctx


async def book(driver: G5kDriver, *views: ReservationView) -> list[ReservationView]:
    states = await driver.on_booked(list(views), ALICE)
    for v in views:
        v.driver_state.update(states[v.id])
    return list(views)


# ---------------------------------------------------------------- inventory and calendar


async def test_sync_nodes_from_the_reference_api(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    clock = driver.inventory.clock = FakeClock()  # the caches' age moves only when told
    specs = {s.name: s for s in await driver.sync_nodes(ALICE) or []}
    # gros-2 is dead: left out.
    assert sorted(specs) == ["grisou-1", "grisou-2", "grisou-3", "grisou-4", "gros-1"]
    g1 = specs["grisou-1"]
    assert g1.properties == {
        "cluster": "grisou",
        "cores": 32,
        "memory_gb": 128,
        "model": "PowerEdge R630",
        "site": "nancy",
    }
    assert g1.attrs["fqdn"] == "grisou-1.nancy.grid5000.fr" and g1.status == "available"
    assert specs["gros-1"].properties["cores"] == 36
    # Cached for inventory_refresh_seconds, then read again.
    g5k_emulator.sim.set_node_hard("grisou-4", "dead")
    assert "grisou-4" in {s.name for s in await driver.sync_nodes(ALICE) or []}
    clock.advance(1.1)
    assert "grisou-4" not in {s.name for s in await driver.sync_nodes(ALICE) or []}


async def test_sync_needs_a_login(g5k_emulator: Emulator, tmp_path: Path) -> None:
    bare = G5kDriver(make_config(g5k_emulator, tmp_path), None)  # type: ignore[arg-type]
    with pytest.raises(CredentialsRequired):
        await bare.sync_nodes(None)
    with pytest.raises(CredentialsRequired, match="refused the login 'alice'"):
        await bare.sync_nodes({"user": "alice", "password": "wrong"})
    # The agent's own account from the config is used when no user login comes along.
    (tmp_path / "g5k.pw").write_text(USERS["bob"] + "\n")
    own = G5kDriver(
        make_config(g5k_emulator, tmp_path, g5k_user="bob", g5k_password_file="g5k.pw"),
        None,  # type: ignore[arg-type]
    )
    assert len(await own.sync_nodes(None) or []) == 5


async def test_remote_busy_shows_other_jobs_not_ours(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    soon = time.time() + 3600
    g5k_emulator.foreign_job("bob", ["grisou-3"], walltime=7200)
    g5k_emulator.foreign_job("alice", ["grisou-4"], walltime=600, start=soon)  # alice, but not via PiSeduce
    await book(driver, view(1, "grisou-1"))
    busy = await driver.remote_busy(utcnow(), utcnow() + dt.timedelta(hours=3), ALICE)
    assert sorted(b.node for b in busy) == ["grisou-3", "grisou-4"]
    g4 = next(b for b in busy if b.node == "grisou-4")
    assert abs(g4.start.timestamp() - soon) < 2 and (g4.end - g4.start) == dt.timedelta(seconds=600)
    # A window before the future job sees only bob's.
    early = await driver.remote_busy(utcnow(), utcnow() + dt.timedelta(minutes=30), ALICE)
    assert [b.node for b in early] == ["grisou-3"]


# ---------------------------------------------------------------- booking


async def test_reserve_one_job_per_reservation_with_the_exact_host(
    driver: G5kDriver, g5k_emulator: Emulator
) -> None:
    later = (utcnow() + dt.timedelta(hours=2)).replace(microsecond=0)
    r1, r2, r3 = await book(
        driver, view(11, "grisou-1", hours=2), view(12, "grisou-2", hours=2), view(13, "gros-1", start=later)
    )
    sim = g5k_emulator.sim
    jobs = {v.id: sim.get_job(v.driver_state["job_id"]) for v in (r1, r2, r3)}
    for v in (r1, r2, r3):
        job = jobs[v.id]
        fqdn = f"{v.node.name}.nancy.grid5000.fr"
        assert job.properties == f"host in ('{fqdn}')" and job.hosts == [fqdn]
        assert job.types == ["deploy"] and job.user == "alice" and job.name == f"piseduce-g5k-test-r{v.id}"
        assert v.driver_state["fqdn"] == fqdn and v.driver_state["g5k_user"] == "alice"
    assert abs(jobs[11].walltime - 7200) <= 60 and not jobs[11].reservation
    # The future start is an OAR advance reservation, in Paris time, for exactly the slot.
    assert jobs[13].reservation and jobs[13].start_at == later.timestamp() and jobs[13].walltime == 3600
    assert r3.driver_state["oar_reservation"] == later.astimezone(SITE_TZ).strftime("%Y-%m-%d %H:%M:%S")
    assert sim.job_state(jobs[13]) == "waiting"
    assert "password" not in json.dumps([r1.driver_state, r2.driver_state, r3.driver_state])


async def test_oar_refusal_rolls_the_whole_booking_back(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    start = utcnow() + dt.timedelta(hours=1)
    g5k_emulator.foreign_job("bob", ["grisou-3"], walltime=7200, start=start.timestamp() + 600)
    with pytest.raises(BookingRefused, match=r"grisou-3: .*REJECTED") as err:
        await driver.on_booked([view(21, "grisou-2", start=start), view(22, "grisou-3", start=start)], ALICE)
    assert "refused the job for grisou-3" in str(err.value)
    # The job OAR accepted for grisou-2 was deleted with the booking.
    sim = g5k_emulator.sim
    mine = [j for j in sim.jobs.values() if j.user == "alice"]
    assert len(mine) == 1 and mine[0].deleted_at is not None


async def test_immediate_booking_of_a_node_held_outside(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    g5k_emulator.foreign_job("bob", ["grisou-4"], walltime=3 * 3600)
    with pytest.raises(BookingRefused, match="held by another Grid'5000 job"):
        await driver.on_booked([view(31, "grisou-4")], ALICE)
    assert all(j.deleted_at is not None for j in g5k_emulator.sim.jobs.values() if j.user == "alice")


async def test_wrong_or_missing_credentials(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    with pytest.raises(CredentialsRequired, match="no Grid'5000 login"):
        await driver.on_booked([view(41, "grisou-1")], None)
    with pytest.raises(CredentialsRequired, match="refused the login 'alice'"):
        await driver.on_booked([view(41, "grisou-1")], {"user": "alice", "password": "guess"})
    assert not g5k_emulator.sim.jobs
    r = view(42, "grisou-1")
    await book(driver, r)
    with pytest.raises(StepError, match=r"credentials missing: set them in Settings → G5k Credentials"):
        await run_process(driver, "deploy", r, creds=None)
    with pytest.raises(StepError, match=r"refused the login 'alice': check .* Settings → G5k Credentials"):
        await run_process(driver, "deploy", r, creds={"user": "alice", "password": "guess"})


# ---------------------------------------------------------------- deploy, KO, destroy, redeploy


async def test_deploy_form_comes_from_the_site(driver: G5kDriver) -> None:
    r = view(51, "grisou-1")
    fields = {f.name: f for f in await driver.deploy_form(r, ALICE)}
    env = fields["environment"]
    assert env.kind == "select" and env.required and env.default == "debian12-min"
    assert {"debian11-min", "debian12-nfs", "ubuntu2204-min", "rocky9-min"} <= set(env.choices)
    assert fields["ssh_keys"].kind == "ssh_keys"
    assert await driver.validate_deploy(r, {"environment": "debian12-x64-min", "ssh_keys": [KEY]}, ALICE) == {
        "environment": "debian12-min",
        "ssh_keys": [KEY],
    }
    with pytest.raises(InvalidParams, match="environment"):
        await driver.validate_deploy(r, {"environment": "windows-xp"}, ALICE)
    with pytest.raises(InvalidParams, match="ssh_keys"):
        await driver.validate_deploy(r, {"environment": "debian12-min", "ssh_keys": ["rm -rf /"]}, ALICE)


async def test_deploy_then_redeploy_then_destroy(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    (r,) = await book(driver, view(61, "grisou-2"))
    r.params.update(
        await driver.validate_deploy(r, {"environment": "ubuntu2204-min", "ssh_keys": [KEY]}, ALICE)
    )
    ctx = await run_process(driver, "deploy", r)
    fqdn = "grisou-2.nancy.grid5000.fr"
    sim = g5k_emulator.sim
    dep = sim.get_deployment(r.driver_state["deployment"])
    item = sim.deployment_item(dep)
    assert item["status"] == "terminated" and item["result"] == {
        fqdn: {"macro": None, "micro": None, "state": "OK"}
    }
    assert dep.nodes == [fqdn] and dep.environment == "ubuntu2204-min" and dep.key and "alice-key-" in dep.key
    assert r.connection["ssh"] == f"ssh root@{fqdn}" and r.connection["via"] == "access.grid5000.fr"
    assert "ssh -J alice@access.grid5000.fr" in r.connection["hint"]
    assert any("submitted" in e for e in ctx.events) and ctx.progresses[-1][0] == 100
    # Redeploy: a new Kadeploy run on the same job.
    first = r.driver_state["deployment"]
    await run_process(driver, "redeploy", r)
    assert r.driver_state["deployment"] != first and len(sim.deployments) == 2
    assert len(sim.jobs) == 1
    # Destroy: the job is deleted; destroying again finds it gone and succeeds.
    await run_process(driver, "destroy", r)
    job = sim.get_job(r.driver_state["job_id"])
    assert job.deleted_at is not None and sim.job_state(job) == "error" and r.connection == {}
    r.driver_state.pop("job_gone")
    ctx = await run_process(driver, "destroy", r)
    assert any("already gone" in e for e in ctx.events)


async def test_a_ko_node_fails_while_the_others_deploy(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    g5k_emulator.faults(ko_nodes=["grisou-3"])
    rs = await book(driver, view(71, "grisou-1"), view(72, "grisou-3"), view(73, "grisou-4"))
    for r in rs:
        r.params.update({"environment": "debian12-min", "ssh_keys": []})
    results = await asyncio.gather(*(run_process(driver, "deploy", r) for r in rs), return_exceptions=True)
    ok = [r.node.name for r, res in zip(rs, results, strict=True) if isinstance(res, Ctx)]
    assert ok == ["grisou-1", "grisou-4"]
    err = results[1]
    assert isinstance(err, StepError)
    assert "Kadeploy could not deploy debian12-min on grisou-3.nancy.grid5000.fr: node KO" in str(err)
    assert "SetDeploymentEnvUntrusted/wait_reboot" in str(err)


async def test_kadeploy_error_and_vanished_job(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    r1, r2 = await book(driver, view(81, "grisou-1"), view(82, "grisou-2"))
    for r in (r1, r2):
        r.params["environment"] = "debian12-min"
    g5k_emulator.faults(deploy_error="the disk of the node is dead")
    with pytest.raises(StepError, match="failed: Kadeploy error #1: the disk of the node is dead"):
        await run_process(driver, "deploy", r1)
    g5k_emulator.faults(deploy_error="")
    g5k_emulator.sim.delete_job("alice", r2.driver_state["job_id"])  # deleted outside PiSeduce
    await asyncio.sleep(0.05)
    with pytest.raises(StepError, match=r"OAR job \d+ is error"):
        await run_process(driver, "deploy", r2)


# ---------------------------------------------------------------- extend


async def test_extend_uses_the_walltime_api(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    (r,) = await book(driver, view(91, "grisou-1"))
    sim = g5k_emulator.sim
    job = sim.get_job(r.driver_state["job_id"])
    await asyncio.sleep(0.1)  # running
    before = job.walltime
    update = await driver.on_extend(r, r.end + dt.timedelta(hours=1), ALICE)
    assert 3600 - 60 <= job.walltime - before <= 3600 + 60
    assert update["walltime"] and "walltime_pending" not in update
    # When the extra time meets another job on the node, OAR keeps the increase pending.
    g5k_emulator.foreign_job("bob", ["grisou-1"], walltime=3600, start=job.natural_end(sim.launch) + 600)
    with pytest.raises(ActionRefused, match=r"cannot grant the extension of job \d+ now: .*stays pending"):
        await driver.on_extend(r, r.end + dt.timedelta(hours=3), ALICE)
    # ... and the reservation is not extended beyond what Grid'5000 granted.
    assert sim.walltime_item(job.uid)["pending"] != "+0:0:0" and job.walltime - before < 3 * 3600
    # A future reservation (job still waiting) cannot be extended yet.
    (later,) = await book(driver, view(92, "grisou-2", start=utcnow() + dt.timedelta(hours=5)))
    with pytest.raises(ActionRefused, match="only running jobs"):
        await driver.on_extend(later, later.end + dt.timedelta(hours=1), ALICE)


# ---------------------------------------------------------------- 5xx periods


async def test_api_5xx_for_a_while_is_retried(driver: G5kDriver, g5k_emulator: Emulator) -> None:
    g5k_emulator.faults(fail_next=2)
    (r,) = await book(driver, view(101, "grisou-1"))
    # The failed POST was retried, never doubled.
    assert [j.uid for j in g5k_emulator.sim.jobs.values()] == [r.driver_state["job_id"]]
    # OAR accepts the job but the proxy loses the answer: the job is found and adopted.
    g5k_emulator.faults(drop_next=1)
    (r2,) = await book(driver, view(102, "grisou-2"))
    alice_jobs = [j.uid for j in g5k_emulator.sim.jobs.values() if j.user == "alice"]
    assert alice_jobs == [r.driver_state["job_id"], r2.driver_state["job_id"]]
    g5k_emulator.faults(fail_next=3)
    specs = await driver.sync_nodes(ALICE)
    assert specs is not None and len(specs) == 5


async def test_api_5xx_that_lasts_is_a_clear_failure(
    driver: G5kDriver, g5k_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (r,) = await book(driver, view(111, "grisou-1"))
    r.params["environment"] = "debian12-min"
    g5k_emulator.faults(error_rate=1.0)
    with pytest.raises(DriverError, match=r"HTTP 503 .*after 4 attempts"):
        await driver.on_booked([view(112, "grisou-2")], ALICE)
    with pytest.raises(
        StepError, match=r"reading OAR job \d+: the Grid'5000 API answered HTTP 503.*polls in a row"
    ):
        await run_process(driver, "deploy", r)
    g5k_emulator.faults(error_rate=0.0)
    assert [j.user for j in g5k_emulator.sim.jobs.values()] == ["alice"]
    # The retries were logged, the password never.
    assert "retrying" in caplog.text and USERS["alice"] not in caplog.text


# ---------------------------------------------------------------- through the agent API and executor


@pytest.fixture
def g5k_agent(g5k_emulator: Emulator, make_agent_config: Any) -> Any:
    from piseduce.agent.app import create_app

    config = make_agent_config(
        node_type="g5k",
        driver="",
        name="g5k-nancy",
        g5k_site="nancy",
        g5k_api_url=g5k_emulator.url,
        timeout_scale=0.01,
        poll_interval=0.05,
        turnaround_minutes=0,
        inventory_refresh_seconds=1,
        g5k_status_cache_seconds=0,
    )
    app = create_app(config)
    yield app
    app.state.agent.engine.dispose()


def _headers(config: Any, user: str, creds: dict[str, str] | None) -> dict[str, str]:
    from helpers.agent_helpers import headers
    from piseduce.crypto import encrypt_json, load_fernet

    h = headers(user)
    if creds is not None:
        h["X-Piseduce-Credentials"] = encrypt_json(load_fernet(config.key_path), creds)
    return h


async def _wait_status(
    client: httpx.AsyncClient, rid: int, h: dict[str, str], want: set[str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body = (await client.get(f"/api/reservations/{rid}", headers=h)).json()
        if body["status"] in want:
            return dict(body)
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_through_the_agent_api_and_executor(g5k_emulator: Emulator, g5k_agent: Any) -> None:
    from piseduce.agent.engine.executor import Executor

    state = g5k_agent.state.agent
    config = state.config
    sim = g5k_emulator.sim
    alice = _headers(config, "alice@example.org", ALICE)
    stop = asyncio.Event()
    executor = Executor(config, state.sessions, state.driver, "g5k-test")
    task = asyncio.create_task(executor.run_forever(stop))
    transport = httpx.ASGITransport(app=g5k_agent)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            # Missing or wrong Grid'5000 login: a clear 4xx pointing at the settings.
            r = await client.get("/api/nodes", headers=_headers(config, "alice@example.org", None))
            assert r.status_code == 403 and "Settings → G5k Credentials" in r.json()["detail"]
            wrong = _headers(config, "alice@example.org", {"user": "alice", "password": "guess"})
            r = await client.get("/api/nodes", headers=wrong)
            assert r.status_code == 403 and "Settings → G5k Credentials" in r.json()["detail"], r.text
            r = await client.get("/api/nodes", headers=alice)
            assert r.status_code == 200, r.text
            nodes = {n["name"]: n for n in r.json()}
            assert sorted(nodes) == ["grisou-1", "grisou-2", "grisou-3", "grisou-4", "gros-1"]
            assert nodes["grisou-1"]["properties"]["cores"] == 32

            # A node held by a job made outside PiSeduce is busy; it is never touched.
            bob_job = g5k_emulator.foreign_job("bob", ["grisou-3"], walltime=4 * 3600)
            r = await client.post(
                "/api/reservations",
                json={"filters": [{"nodes": ["grisou-3"]}], "duration_hours": 1},
                headers=alice,
            )
            assert r.status_code == 409, r.text

            r = await client.post(
                "/api/reservations",
                json={"filters": [{"nodes": ["grisou-1"]}], "duration_hours": 2},
                headers=alice,
            )
            assert r.status_code == 201, r.text
            rid = r.json()["reservations"][0]["id"]
            (job,) = [j for j in sim.jobs.values() if j.user == "alice"]
            assert job.properties == "host in ('grisou-1.nancy.grid5000.fr')" and job.types == ["deploy"]

            form = {
                f["name"]: f
                for f in (await client.get(f"/api/reservations/{rid}/form", headers=alice)).json()
            }
            assert "debian12-min" in form["environment"]["choices"]
            r = await client.post(
                f"/api/reservations/{rid}/deploy", json={"environment": "nope"}, headers=alice
            )
            assert r.status_code == 422 and "environment" in r.json()["detail"]
            r = await client.post(
                f"/api/reservations/{rid}/deploy",
                json={"environment": "debian12-min", "ssh_keys": [KEY]},
                headers=alice,
            )
            assert r.status_code == 202, r.text
            body = await _wait_status(client, rid, alice, {"deployed", "failed"})
            assert body["status"] == "deployed", body
            assert body["connection"]["ssh"] == "ssh root@grisou-1.nancy.grid5000.fr"
            assert len(sim.deployments) == 1

            before = job.walltime
            r = await client.post(f"/api/reservations/{rid}/extend", json={"hours": 1}, headers=alice)
            assert r.status_code == 202, r.text
            assert 3600 - 60 <= job.walltime - before <= 3600 + 60

            r = await client.post(f"/api/reservations/{rid}/destroy", headers=alice)
            assert r.status_code == 202, r.text
            await _wait_status(client, rid, alice, {"ended"})
            assert job.deleted_at is not None
            assert sim.get_job(bob_job).deleted_at is None

            # A KO node: the reservation fails with Kadeploy's reason.
            g5k_emulator.faults(ko_nodes=["grisou-2"])
            r = await client.post(
                "/api/reservations",
                json={"filters": [{"nodes": ["grisou-2"]}], "duration_hours": 1},
                headers=alice,
            )
            rid2 = r.json()["reservations"][0]["id"]
            r = await client.post(
                f"/api/reservations/{rid2}/deploy", json={"environment": "debian12-min"}, headers=alice
            )
            assert r.status_code == 202, r.text
            body = await _wait_status(client, rid2, alice, {"deployed", "failed"})
            assert body["status"] == "failed" and "Kadeploy could not deploy" in body["error"], body
            assert USERS["alice"] not in json.dumps(body)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_credentials_check_asks_the_grid5000_api(g5k_emulator: Emulator, g5k_agent: Any) -> None:
    """POST /api/credentials/check: the emulator (which enforces passwords) decides."""
    config = g5k_agent.state.agent.config
    transport = httpx.ASGITransport(app=g5k_agent)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        alice = _headers(config, "alice@example.org", ALICE)
        ok = await client.post("/api/credentials/check", headers=alice)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "valid": True,
            "testbed": "Grid'5000",
            "user": "alice",
            "message": "Grid'5000 accepted the login alice (site nancy)",
        }
        wrong = _headers(config, "alice@example.org", {"user": "alice", "password": "not-her-password"})
        r = await client.post("/api/credentials/check", headers=wrong)
        assert r.status_code == 200 and r.json()["valid"] is False, r.text
        assert "refused the login 'alice'" in r.json()["message"]
        r = await client.post("/api/credentials/check", headers=_headers(config, "alice@example.org", None))
        assert r.status_code == 400 and "X-Piseduce-Credentials" in r.json()["detail"]
        # The testbed cannot be asked: 502 with the reason, never "refused".
        g5k_emulator.faults(error_rate=1.0)
        try:
            r = await client.post("/api/credentials/check", headers=alice)
        finally:
            g5k_emulator.faults(error_rate=0.0)
        assert r.status_code == 502 and "Grid'5000" in r.json()["detail"], r.text
        spec = (await client.get("/openapi.json", headers=alice)).json()
        route = spec["paths"]["/api/credentials/check"]["post"]
        assert "X-Piseduce-Credentials" in route["description"]
        assert "CredentialsCheckOut" in json.dumps(route["responses"]["200"])
