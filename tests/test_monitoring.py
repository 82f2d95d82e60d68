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

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry import RaspberryDriver
from piseduce.agent.drivers.raspberry.monitoring import parse_millicelsius
from piseduce.agent.models import Node, Sample
from piseduce.agent.monitor import Monitor, run_monitor
from piseduce.config import AgentConfig
from piseduce.db import write_session
from piseduce.sim.rpi.cluster import RpiCluster
from raspberry_helpers import USER, agent_config, register, sessions_for
from rpi_fixtures import nfs_boot_folder, power, running_cluster, wait_for

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
    await wait_for(lambda: board.system == "nfs", timeout=10)


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
        other = lab.cluster.board("pi-1").describe()["host_key"]  # pi-1's deployed key, not an NFS one
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

        await wait_for(lambda: count() >= 4, timeout=10, interval=0.1)  # two rounds of two powers
        stop.set()
        await asyncio.wait_for(task, 5)
