"""Monitoring: the raspberry sampler against the simulated cluster (SNMP power, SSH temperature),
the monitor's rounds and retention, `/api/monitoring`, the Prometheus gauges, and the web UI page."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from helpers.constants import TOKEN
from helpers.raspberry_helpers import USER, agent_config, register, sessions_for
from helpers.rpi_fixtures import nfs_boot_folder, power, running_cluster
from helpers.waiting import wait_until
from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.monitoring import parse_millicelsius
from piseduce.agent.models import Node, Sample
from piseduce.agent.monitor import Monitor, run_monitor
from piseduce.config import AgentConfig
from piseduce.db import write_session
from piseduce.sim.rpi.cluster import RpiCluster

PERIOD = 3.0  # monitor_period_seconds: SSH timeouts of 1 s


@dataclass
class Lab:
    config: AgentConfig
    sessions: sessionmaker[Session]
    cluster: RpiCluster
    driver: RaspberryDriver

    @property
    def inventory(self) -> dict[str, Any]:
        return self.cluster.inventory()


@contextlib.asynccontextmanager
async def make_lab(tmp_path: Path, **extra: Any) -> AsyncIterator[Lab]:
    async with running_cluster(tmp_path, boards=2, time_scale=20.0, seed=3) as (cluster, key):
        config = agent_config(
            tmp_path,
            tftp_root=str(cluster.opts.tftp_root),
            nfs_root=str(cluster.opts.nfs_root),
            ssh_key_file=str(key),
            monitor_period_seconds=PERIOD,
            **extra,
        )
        sessions = sessions_for(config)
        register(sessions, cluster.inventory())
        driver = RaspberryDriver(config, sessions)
        try:
            yield Lab(config, sessions, cluster, driver)
        finally:
            await driver.close()


def by_kind(samples: list[tuple[str, str, float]], kind: str) -> dict[str, float]:
    return {subject: value for k, subject, value in samples if k == kind}


async def boot_nfs(lab: Lab, name: str, port: int) -> None:
    nfs_boot_folder(lab.cluster, name)
    await power(lab.inventory, port, on=True)
    board = lab.cluster.board(name)
    await wait_until(lambda: board.system == "nfs", timeout=10)


# ---------------------------------------------------------------- the raspberry sampler


def test_parse_millicelsius() -> None:
    assert parse_millicelsius("48312\n") == 48.312
    assert parse_millicelsius("-5000") == -5.0
    for bad in ("", "hot", "48.3", "999999", "-100000", "1e3"):
        assert parse_millicelsius(bad) is None, bad


async def test_power_follows_the_board_and_temperature_is_read(tmp_path: Path) -> None:
    async with make_lab(tmp_path) as lab:
        off = await lab.driver.sample()
        assert by_kind(off, "power") == {"pi-1": 0.0, "pi-2": 0.0}
        assert by_kind(off, "temperature") == {}  # powered-off boards are not even tried

        await boot_nfs(lab, "pi-1", 1)
        on = await lab.driver.sample()
        watts = by_kind(on, "power")
        assert watts["pi-2"] == 0.0
        assert 1.5 < watts["pi-1"] < 10.0, watts  # a Pi 4 draws a few watts (mW on the wire)
        temps = by_kind(on, "temperature")
        assert set(temps) == {"pi-1"}
        assert 20.0 <= temps["pi-1"] <= 90.0

        await power(lab.inventory, 1, on=False)
        again = await lab.driver.sample()
        assert by_kind(again, "power")["pi-1"] == 0.0
        assert by_kind(again, "temperature") == {}


async def test_unpinned_or_wrong_host_key_is_not_measured(tmp_path: Path) -> None:
    async with make_lab(tmp_path) as lab:
        await boot_nfs(lab, "pi-1", 1)
        await boot_nfs(lab, "pi-2", 2)
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
        with write_session(lab.sessions) as s:
            n1 = s.get(Node, "pi-1")
            assert n1 is not None
            n1.attrs = {k: v for k, v in n1.attrs.items() if k != "host_key"}
            n2 = s.get(Node, "pi-2")
            assert n2 is not None
            n2.attrs = {**n2.attrs, "host_key": other}
        samples = await lab.driver.sample()
        assert set(by_kind(samples, "power")) == {"pi-1", "pi-2"}
        assert by_kind(samples, "temperature") == {}


async def test_a_silent_board_costs_one_short_timeout(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never says a word of SSH

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with make_lab(tmp_path) as lab:
            await boot_nfs(lab, "pi-1", 1)
            inv = lab.inventory
            with write_session(lab.sessions) as s:
                # On the master port, which draws power: the sampler will try to log in.
                s.add(
                    Node(
                        name="pi-dead",
                        ip="127.0.0.1",
                        properties={"model": "RPI4B"},
                        attrs={
                            "switch": inv["switch"]["name"],
                            "port": inv["switch"]["master_port"],
                            "ssh_port": port,
                            "serial": "deadbeef",
                            "host_key": inv["boards"][0]["nfs_host_key"],
                        },
                    )
                )
            t0 = time.monotonic()
            samples = await lab.driver.sample()
            elapsed = time.monotonic() - t0
            assert "pi-1" in by_kind(samples, "temperature")
            assert "pi-dead" not in by_kind(samples, "temperature")
            assert by_kind(samples, "power")["pi-dead"] > 0
            assert elapsed < PERIOD, elapsed
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- the monitor


async def test_monitor_rounds_store_samples_and_purge_old_ones(tmp_path: Path) -> None:
    async with make_lab(tmp_path, monitor_retention_days=1) as lab:
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=20)
        with write_session(lab.sessions) as s:
            s.add(Sample(time=old, kind="power", subject="pi-1", value=1.0))
            s.add(Sample(time=recent, kind="power", subject="pi-1", value=2.0))
        await boot_nfs(lab, "pi-1", 1)
        monitor = Monitor(lab.config, lab.sessions, lab.driver)
        assert await monitor.round() == 3  # two powers, one temperature
        with lab.sessions() as s:
            rows = s.execute(select(Sample.time, Sample.kind, Sample.subject, Sample.value)).all()
        times = sorted({r.time for r in rows})
        assert min(times) > old  # purged
        assert any(r.time == recent and r.value == 2.0 for r in rows)  # kept
        fresh = [r for r in rows if r.time != recent]
        assert len({r.time for r in fresh}) == 1  # one round, one timestamp
        assert {(r.kind, r.subject) for r in fresh} == {
            ("power", "pi-1"),
            ("power", "pi-2"),
            ("temperature", "pi-1"),
        }


async def test_run_monitor_samples_on_its_period_and_stops(tmp_path: Path) -> None:
    async with make_lab(tmp_path) as lab:
        lab.config.monitor_period_seconds = 1.0
        stop = asyncio.Event()
        task = asyncio.create_task(run_monitor(lab.config, stop=stop))

        def count() -> int:
            with lab.sessions() as s:
                return int(s.scalar(select(func.count()).select_from(Sample)) or 0)

        await wait_until(lambda: count() >= 4, timeout=10, interval=0.1)  # two rounds of two powers
        stop.set()
        await asyncio.wait_for(task, 5)


# ---------------------------------------------------------------- /api/monitoring and /metrics


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An agent (raspberry driver, no cluster needed) with two nodes and samples over 2 days."""
    from starlette.testclient import TestClient

    config = agent_config(tmp_path_factory.mktemp("api"), monitor_period_seconds=10)
    sessions = sessions_for(config)
    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    # pi-1: one sample every 10 s over the last 2 days (17280 of each kind); pi-2: the last hour.
    for k in range(2 * 8640):
        t = now - dt.timedelta(seconds=10 * k + 5)
        rows.append({"time": t, "kind": "power", "subject": "pi-1", "value": 2.0 + (k % 2)})
        rows.append({"time": t, "kind": "temperature", "subject": "pi-1", "value": 40.0})
        if k < 360:
            rows.append({"time": t, "kind": "power", "subject": "pi-2", "value": 0.0})
    with write_session(sessions) as s:
        for i in (1, 2):
            s.add(Node(name=f"pi-{i}", ip="127.0.0.1", attrs={"switch": "sw1", "port": i}))
        s.execute(insert(Sample), rows)
    with TestClient(create_app(config)) as client:
        yield client


def test_series_json_shape_and_bounds(api: Any) -> None:
    r = api.get("/api/monitoring", params={"kind": "power", "period": "1h"}, headers=USER)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "power" and body["unit"] == "W"
    assert dt.datetime.fromisoformat(body["until"]) - dt.datetime.fromisoformat(
        body["since"]
    ) == dt.timedelta(hours=1)
    series = {s["subject"]: s for s in body["series"]}
    assert set(series) == {"pi-1", "pi-2"}
    one = series["pi-1"]
    assert len(one["t"]) == len(one["v"]) and 300 <= len(one["t"]) <= 360
    assert one["t"] == sorted(one["t"]) and one["t"][0].endswith("Z")
    assert all(2.0 <= v <= 3.0 for v in one["v"])
    assert set(series["pi-2"]["v"]) == {0.0}

    day = api.get("/api/monitoring", params={"kind": "power", "period": "24h", "node": "pi-1"}, headers=USER)
    assert day.status_code == 200
    [only] = day.json()["series"]
    assert only["subject"] == "pi-1"
    assert 450 <= len(only["t"]) <= 501  # 8640 samples averaged into at most ~500 buckets
    assert all(2.0 <= v <= 3.0 for v in only["v"]) and any(2.0 < v < 3.0 for v in only["v"])

    since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)).isoformat()
    temp = api.get("/api/monitoring", params={"kind": "temperature", "since": since}, headers=USER)
    assert temp.status_code == 200
    assert temp.json()["unit"] == "°C"
    assert [s["subject"] for s in temp.json()["series"]] == ["pi-1"]
    assert set(temp.json()["series"][0]["v"]) == {40.0}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"kind": "humidity"},
        {"kind": "power", "period": "forever"},
        {"kind": "power", "period": "0h"},
        {"kind": "power", "period": "40d"},
        {"kind": "power", "since": "yesterday"},
        {"kind": "power", "since": "1999-01-01T00:00:00Z"},
        {"kind": "power", "since": "2999-01-01T00:00:00Z"},
        {"kind": "power", "since": "0001-01-01T00:00:00+00:01"},
        {"kind": "power", "since": "9999-12-31T23:59:00-01:00"},
        {"kind": "power", "since": "2024-01-01T00:00:00Z", "period": "1h"},
        {"kind": "power", "node": "x" * 200},
        {"kind": "power", "perod": "6h"},
    ],
)
def test_bad_queries_are_4xx(api: Any, params: dict[str, str]) -> None:
    r = api.get("/api/monitoring", params=params, headers=USER)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()


def test_monitoring_needs_the_token(api: Any) -> None:
    r = api.get(
        "/api/monitoring",
        params={"kind": "power"},
        headers={**USER, "Authorization": "Bearer wrong-token-123"},
    )
    assert r.status_code == 401


def test_metrics_show_the_latest_samples(api: Any) -> None:
    text = api.get("/metrics", headers=USER).text
    assert 'piseduce_port_power_watts{node="pi-1",port="1",switch="sw1"} 2.0' in text
    assert 'piseduce_port_power_watts{node="pi-2",port="2",switch="sw1"} 0.0' in text
    assert 'piseduce_node_temperature_celsius{node="pi-1"} 40.0' in text
    assert 'piseduce_node_temperature_celsius{node="pi-2"}' not in text


def test_series_buckets_on_postgresql(pg_url: str) -> None:
    """The bucket expression is dialect-specific: the same answer on PostgreSQL."""
    from piseduce.agent.api.monitoring import series
    from piseduce.db import make_engine, session_factory, upgrade

    upgrade("agent", pg_url)
    engine = make_engine(pg_url)
    try:
        sessions = session_factory(engine)
        now = dt.datetime.now(dt.UTC)
        with write_session(sessions) as s:
            s.execute(
                insert(Sample),
                [
                    {
                        "time": now - dt.timedelta(seconds=10 * k + 5),
                        "kind": "power",
                        "subject": "pi-1",
                        "value": 2.0 + (k % 2),
                    }
                    for k in range(8640)
                ],
            )
        step, found = series(sessions, "power", now - dt.timedelta(hours=24), now, None)
        assert step == pytest.approx(86400 / 500)
        [one] = found
        assert 450 <= len(one["t"]) <= 501 and one["t"] == sorted(one["t"])
        assert all(2.0 <= v <= 3.0 for v in one["v"])
        step, found = series(sessions, "power", now - dt.timedelta(hours=1), now, "pi-1")
        assert 340 <= len(found[0]["t"]) <= 360
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the web UI page


def monitoring_agent_app(name: str) -> Any:
    """An agent answering /api/monitoring with two nodes (checks the token and the user header)."""
    from fastapi import FastAPI, Header, HTTPException

    app = FastAPI()
    seen: list[dict[str, str]] = []
    app.state.seen = seen

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, str]:
        return {"name": name, "node_type": "raspberry", "site": name, "version": "test"}

    @app.get("/api/monitoring")
    async def monitoring(
        kind: str,
        period: str,
        authorization: str | None = Header(default=None),
        x_piseduce_user: str | None = Header(default=None),
    ) -> dict[str, Any]:
        if authorization != f"Bearer {TOKEN}" or not x_piseduce_user:
            raise HTTPException(401, "wrong token")
        seen.append({"kind": kind, "period": period, "user": x_piseduce_user})
        now = dt.datetime.now(dt.UTC)
        times = [(now - dt.timedelta(minutes=m)).isoformat().replace("+00:00", "Z") for m in (3, 2, 1)]
        value = {"power": (2.5, 0.0), "temperature": (47.25, 31.0)}[kind]
        return {
            "kind": kind,
            "unit": "W" if kind == "power" else "°C",
            "since": times[0],
            "until": times[-1],
            "step_seconds": 7.2,
            "series": [
                {"subject": "pi-1", "t": times, "v": [value[0]] * 3},
                {"subject": "<b>pi-2</b>", "t": times, "v": [value[1]] * 3},
            ],
        }

    return app


@contextlib.contextmanager
def serve(app: Any) -> Any:
    import threading

    import uvicorn

    from helpers.agent_helpers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake agent did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.usefixtures("fast_argon2")
def test_webui_monitoring_page(tmp_path: Path) -> None:
    from helpers.webui_fixtures import SilentPort, add_user, webui_client, write_webui_config
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory
    from piseduce.webui.models import Agent

    config = write_webui_config(tmp_path / "webui", agent_timeout_seconds=1.0)
    add_user(config, "alice@example.org", "alice-password")
    fake = monitoring_agent_app("rpi-lab")
    silent = SilentPort()
    try:
        with serve(fake) as port:
            cfg = load_webui_config(config)
            token = crypto.encrypt_str(crypto.load_fernet(cfg.key_path), TOKEN)
            engine = make_engine(cfg.database_url)
            with session_factory(engine)() as s, s.begin():
                s.add(
                    Agent(
                        name="rpi-lab",
                        host="127.0.0.1",
                        port=port,
                        node_type="raspberry",
                        token=token,
                        status="connected",
                    )
                )
                s.add(
                    Agent(
                        name="hung-pi",
                        host="127.0.0.1",
                        port=silent.port,
                        node_type="raspberry",
                        token=token,
                        status="connected",
                    )
                )
                # Not a raspberry agent: not asked (its nodes have no power or temperature samples).
                s.add(
                    Agent(
                        name="g5k-nancy",
                        host="127.0.0.1",
                        port=silent.port,
                        node_type="g5k",
                        token=token,
                        status="connected",
                    )
                )
            engine.dispose()
            with webui_client(config) as b:
                assert b.get("/monitoring", follow_redirects=False).status_code in (302, 303)  # login first
                b.login("alice@example.org", "alice-password")
                t0 = time.monotonic()
                page = b.get("/monitoring", params={"period": "6h"})
                took = time.monotonic() - t0
                assert page.status_code == 200
                html = page.text
                assert took < 2.5, took  # the hung agent costs one short timeout, not a stall
                assert "hung-pi: unreachable" in html
                assert "g5k-nancy" not in html
                assert 'href="/monitoring" class="active"' in html
                assert '<option value="6h" selected>' in html
                assert '<script src="/static/monitoring.js" defer></script>' in html
                # The latest values, readable without JavaScript; agent text is escaped.
                assert "<td>pi-1</td><td>rpi-lab</td>" in html.replace("\n", "").replace("      ", "")
                assert "2.50" in html and "47.2" in html
                assert "<b>pi-2</b>" not in html and "&lt;b&gt;pi-2&lt;/b&gt;" in html
                assert {"kind": "power", "period": "6h", "user": "alice@example.org"} in fake.state.seen
                # The chart data: JSON, refreshed by the script.
                data = b.get("/monitoring/data", params={"period": "24h"}).json()
                assert data["period"] == "24h"
                [agent] = data["agents"]
                assert agent["agent"] == "rpi-lab"
                assert [s["node"] for s in agent["power"]] == ["pi-1", "<b>pi-2</b>"]
                assert agent["temperature"][0]["v"] == [47.25] * 3
                assert any(e.startswith("hung-pi: unreachable") for e in data["errors"])
                assert b.get("/monitoring/data", params={"period": "1y"}).json()["period"] == "1h"
                js = b.get("/static/monitoring.js")
                assert js.status_code == 200 and "createElementNS" in js.text
    finally:
        silent.close()


def test_cli_agent_monitor_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess

    from helpers.agent_helpers import piseduce_cmd, subprocess_env

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config_agent.json").write_text('{"auth_token": ["' + TOKEN + '"], "db_url": "sqlite:///a.db"}')
    out = subprocess.run(
        piseduce_cmd("agent", "monitor", str(fresh / "config_agent.json")),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "init-db" in out.stderr + out.stdout  # no tables yet: one clear line

    config = agent_config(tmp_path, monitor_period_seconds=1)
    log = tmp_path / "monitor.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            piseduce_cmd("agent", "monitor", str(config.path)), env=subprocess_env(), stdout=fh, stderr=fh
        )
        try:
            deadline = time.monotonic() + 30
            while "monitoring every 1 s" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
