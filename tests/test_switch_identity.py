"""One switch, one record: a second record of a switch's address (ip + SNMP port) would carry its
own master port and let an administrator cut the first one's uplink through it. Refused on add and
on update, whatever the spelling of the address; records an older version left are said at start
and cannot be used to switch an uplink either."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import sessions_for
from helpers.switch_fixtures import Ports
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.agent.models import Switch
from piseduce.config import load_agent_config
from piseduce.db import write_session

Api = tuple[httpx.AsyncClient, Ports, SwitchInfo, Path]


def _body(sw: SwitchInfo, name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "ip": "127.0.0.1", "snmp_port": sw.snmp_port, "community": "s3cret",
            "port_count": 5, "master_port": 5, **extra}


async def _names(client: httpx.AsyncClient) -> list[str]:
    return [s["name"] for s in (await client.get("/api/admin/switches", headers=ADMIN)).json()]


async def test_a_second_record_of_a_switch_is_refused_and_its_uplink_stays_on(api: Api) -> None:  # noqa: F811
    client, ports, sw, _ = api
    r = await client.post("/api/admin/switches", json=_body(sw, "sw1"), headers=ADMIN)
    assert r.status_code == 201, r.text
    ports.on[5] = True  # sw1's uplink: the pimaster's link
    # What the black-box tester did: the same switch again, with another master port.
    for ip in ("127.0.0.1", " 127.0.0.1", "localhost", "LocalHost"):
        r = await client.post("/api/admin/switches", json=_body(sw, "sw1b", ip=ip, master_port=1),
                              headers=ADMIN)
        assert r.status_code == 409, (ip, r.text)
        detail = r.json()["detail"]
        assert detail.startswith("switch sw1 is already the switch at"), detail
        assert "edit sw1 instead" in detail
    assert await _names(client) == ["sw1"]
    r = await client.post("/api/admin/switches/sw1b/ports/5/off", headers=ADMIN)
    assert r.status_code == 404 and ports.on[5]

    # Another port of the same host is another switch; turning it into sw1 by an update is refused.
    r = await client.post("/api/admin/switches", json=_body(sw, "sw2", snmp_port=sw.snmp_port + 1),
                          headers=ADMIN)
    assert r.status_code == 201, r.text
    r = await client.put("/api/admin/switches/sw2", json=_body(sw, "sw2", master_port=1), headers=ADMIN)
    assert r.status_code == 409 and r.json()["detail"].startswith("switch sw1 is already"), r.text
    stored = {s["name"]: s for s in (await client.get("/api/admin/switches", headers=ADMIN)).json()}
    assert stored["sw2"]["snmp_port"] == sw.snmp_port + 1 and stored["sw2"]["master_port"] == 5
    # A record updated in place keeps its own address: no conflict with itself.
    r = await client.put("/api/admin/switches/sw1", json=_body(sw, "sw1", port_count=6), headers=ADMIN)
    assert r.status_code == 200 and r.json()["port_count"] == 6, r.text
    # Creating sw1 again still says that the name is taken.
    r = await client.post("/api/admin/switches", json=_body(sw, "sw1"), headers=ADMIN)
    assert r.status_code == 409 and r.json()["detail"] == "switch sw1 already exists"


async def test_duplicates_an_older_version_left_are_said_and_cannot_cut_the_uplink(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    client, ports, sw, _ = api
    r = await client.post("/api/admin/switches", json=_body(sw, "sw1"), headers=ADMIN)
    assert r.status_code == 201, r.text
    config = load_agent_config(tmp_path / "config_agent.json")  # the api fixture's
    sessions = sessions_for(config)
    with write_session(sessions) as s:  # as a database of an earlier version may hold it
        s.add(Switch(name="sw1b", ip="127.0.0.1", snmp_port=sw.snmp_port, community="s3cret",
                     port_count=5, master_port=1))
    with caplog.at_level(logging.WARNING):
        RaspberryDriver(config, sessions)
    assert any("sw1, sw1b are one switch" in r.getMessage() for r in caplog.records), caplog.text

    ports.on[5] = ports.on[1] = True
    r = await client.post("/api/admin/switches/sw1b/ports/5/off", headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == ("port 5 of switch sw1b is the master (uplink) port of switch sw1, "
                                  "the same switch: its power is never switched")
    r = await client.post("/api/admin/switches/sw1/ports/1/off", headers=ADMIN)
    assert r.status_code == 409 and "uplink" in r.json()["detail"], r.text
    assert ports.on[5] and ports.on[1]
    # Other ports of the stale record still work while the administrator cleans up.
    r = await client.post("/api/admin/switches/sw1b/ports/2/on", headers=ADMIN)
    assert r.status_code == 200 and ports.on[2]
