"""A simulated PoE switch (SNMP, five ports, a dict behind them) and a raspberry agent's API on it,
as fixtures: `switch` and `api`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from helpers.raspberry_helpers import agent_config
from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.sim.rpi.switch import SnmpSwitch, SwitchOptions

# ---------------------------------------------------------------- keys, passwords, form


class Ports:
    """The switch simulator's port backend, reduced to a dict."""

    def __init__(self, count: int) -> None:
        self.port_count = count
        self.on = dict.fromkeys(range(1, count + 1), False)

    def port_enabled(self, port: int) -> bool:
        return self.on[port]

    def set_port_enabled(self, port: int, enabled: bool) -> None:
        self.on[port] = enabled

    def port_power_mw(self, port: int) -> int:
        return 3400 if self.on[port] else 0


@pytest.fixture
async def switch() -> AsyncIterator[tuple[Ports, SwitchInfo]]:
    ports = Ports(5)
    sim = SnmpSwitch(ports, SwitchOptions(community="s3cret"))
    await sim.start()
    info = SwitchInfo(
        name="sw1",
        ip="127.0.0.1",
        snmp_port=sim.port,
        community="s3cret",
        port_count=5,
        master_port=5,
        power_oid="1.3.6.1.4.1.9.9.402.1.2.1.9.1",
    )
    try:
        yield ports, info
    finally:
        await sim.stop()


@pytest.fixture
async def api(
    tmp_path: Path, switch: tuple[Ports, SwitchInfo]
) -> AsyncIterator[tuple[httpx.AsyncClient, Ports, SwitchInfo, Path]]:
    config = agent_config(tmp_path)
    app = create_app(config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        yield client, switch[0], switch[1], config.env_dir
    await app.state.agent.driver.close()
