"""Admin API of a raspberry agent: refusals that protect the PoE ports, messages in words, and a
power cut under a user's deployed node recorded on that user's reservation."""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

import httpx
import pytest

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import USER, sessions_for
from helpers.switch_fixtures import Ports
from piseduce.agent.drivers.raspberry.snmp import SnmpClient, SnmpRefused, SwitchInfo
from piseduce.agent.models import Reservation
from piseduce.config import load_agent_config
from piseduce.db import write_session
from piseduce.dbtypes import utcnow

Api = tuple[httpx.AsyncClient, Ports, SwitchInfo, Path]


async def _switch(client: httpx.AsyncClient, sw: SwitchInfo, **extra: object) -> None:
    body = {"name": "sw1", "ip": "127.0.0.1", "snmp_port": sw.snmp_port, "community": "s3cret",
            "port_count": 5, "master_port": 5, **extra}
    r = await client.post("/api/admin/switches", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text


def _node(name: str, port: int | None, **extra: object) -> dict[str, object]:
    # Each board its own serial (8 hex digits): its TFTP folder is named by it.
    return {"name": name, "ip": "10.0.0.9", "switch": "sw1", "port": port, "model": "RPI4B",
            "serial": f"{zlib.crc32(name.encode()):08x}", **extra}


async def test_a_node_needs_a_free_real_port_that_is_not_the_uplink(api: Api) -> None:  # noqa: F811
    client, _, sw, _ = api
    await _switch(client, sw)
    assert (await client.post("/api/admin/nodes", json=_node("pi-1", 1), headers=ADMIN)).status_code == 201
    # Another node on pi-1's port: both would be powered off together.
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 1), headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == "port 1 of switch sw1 already powers pi-1; free ports: 2, 3, 4"
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 6), headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"] == (
        "port: switch sw1 has ports 1 to 5; 6 is not one of them"), r.text
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 0), headers=ADMIN)
    assert r.status_code == 422 and "0 is not one of them" in r.json()["detail"]
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 5), headers=ADMIN)
    assert r.status_code == 409 and "master (uplink) port" in r.json()["detail"], r.text
    names = [n["name"] for n in (await client.get("/api/admin/nodes", headers=ADMIN)).json()]
    assert names == ["pi-1"]  # nothing was added
    # A node removed from pi-1's port frees it; a node coming back takes its own port again.
    assert (await client.post("/api/admin/nodes", json=_node("pi-2", 2), headers=ADMIN)).status_code == 201
    assert (await client.delete("/api/admin/nodes/pi-1", headers=ADMIN)).status_code == 200
    assert (await client.post("/api/admin/nodes", json=_node("pi-3", 1), headers=ADMIN)).status_code == 201


async def test_a_name_in_use_is_said_before_the_port_and_free_ports_are_free(api: Api) -> None:  # noqa: F811
    client, _, sw, _ = api
    await _switch(client, sw)
    for i in (1, 2, 3):
        r = await client.post("/api/admin/nodes", json=_node(f"pi-{i}", i), headers=ADMIN)
        assert r.status_code == 201, r.text
    # pi-2 again, on pi-3's port: the name is the problem, said first.
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 3, serial="0badcafe"), headers=ADMIN)
    assert r.status_code == 409 and r.json()["detail"] == "node pi-2 already exists", r.text
    # A new node on pi-3's port: the free ports are the free ones (port 2 is pi-2's).
    r = await client.post("/api/admin/nodes", json=_node("pi-4", 3, serial="0badcafe"), headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == "port 3 of switch sw1 already powers pi-3; free ports: 4"


@pytest.mark.parametrize("serial", ["xyz", "ab12", "9ffefdeg", "123456789", "10000000-9ffefdef", "9ffe fdef"])
async def test_serials_are_raspberry_pi_serials(api: Api, serial: str) -> None:  # noqa: F811
    client, _, sw, _ = api
    await _switch(client, sw)
    r = await client.post("/api/admin/nodes", json=_node("pi-1", 1, serial=serial), headers=ADMIN)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "serial"] and "pattern" not in error["msg"], error
    assert error["msg"].endswith(
        "is not a board serial: a Raspberry Pi's serial is 8 hexadecimal digits (the end of 'Serial' in "
        "/proc/cpuinfo, like 9ffefdef), or all 16 of them"), error["msg"]


async def test_a_serial_is_written_one_way_and_is_one_board_s(api: Api) -> None:  # noqa: F811
    client, _, sw, _ = api
    await _switch(client, sw)
    # /proc/cpuinfo's 16 digits, upper case: the 8 the firmware names its TFTP folder with.
    r = await client.post("/api/admin/nodes", json=_node("pi-1", 1, serial="100000009FFEFDEF"), headers=ADMIN)
    assert r.status_code == 201 and r.json()["attrs"]["serial"] == "9ffefdef", r.text
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 2, serial="9FFEFDEF"), headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == (
        "serial 9ffefdef is pi-1's already: each board has its own (it names the board's TFTP folder)")
    r = await client.post("/api/admin/nodes", json=_node("pi-2", 2, serial=""), headers=ADMIN)
    assert r.status_code == 201 and "serial" not in r.json()["attrs"], r.text


@pytest.mark.parametrize("mac", ["dc:a6:32:zz:02:03", "dc:a6:32:01:02", "dc:a6:32:01:02:03:04", "x"])
async def test_bad_macs_get_words_not_a_pattern(api: Api, mac: str) -> None:  # noqa: F811
    client, _, sw, _ = api
    await _switch(client, sw)
    r = await client.post("/api/admin/nodes", json=_node("pi-1", 1, mac=mac), headers=ADMIN)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "mac"]
    assert "pattern" not in error["msg"] and "[0-9" not in error["msg"]
    assert error["msg"].endswith("is not a MAC address: write six pairs of hexadecimal digits "
                                 "separated by colons, like dc:a6:32:01:02:03")


async def test_macs_are_written_one_way(api: Api) -> None:  # noqa: F811
    client, _, sw, _ = api
    await _switch(client, sw)
    r = await client.post("/api/admin/nodes", json=_node("pi-1", 1, mac="DC-A6-32-01-02-0F"), headers=ADMIN)
    assert r.status_code == 201 and r.json()["attrs"]["mac"] == "dc:a6:32:01:02:0f"
    r = await client.post("/api/admin/nodes", json=_node("pi 2", 2, serial="ab-12"), headers=ADMIN)
    assert r.status_code == 422
    words = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
    assert "is not a valid name" in words["name"] and "is not a board serial" in words["serial"]
    assert not any("pattern" in m for m in words.values())


async def test_snmp_not_writable_is_said_as_such(api: Api) -> None:  # noqa: F811
    """A switch that answers notWritable is reachable: it refuses writes on that OID."""
    client, ports, sw, _ = api
    # sysDescr is read-only on every switch: a wrong PoE OID.
    await _switch(client, sw, poe_oid="1.3.6.1.2.1.1.1")
    r = await client.post("/api/admin/switches/sw1/ports/2/on", headers=ADMIN)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "notWritable" in detail and "refuses writes to 1.3.6.1.2.1.1.1.2" in detail, detail
    assert "check the switch's PoE OID" in detail and not ports.on[2]
    client_ = SnmpClient(timeout=0.3, retries=0)
    try:
        with pytest.raises(SnmpRefused, match="read-only for this community"):
            await client_.set_power(SwitchInfo(name="sw1", ip="127.0.0.1", snmp_port=sw.snmp_port,
                                               community="s3cret", poe_oid="1.3.6.1.2.1.1.1",
                                               port_count=5), 2, True)
    finally:
        client_.close()


async def test_power_off_under_a_deployed_node_is_told_to_its_owner(api: Api, tmp_path: Path) -> None:  # noqa: F811
    client, ports, sw, _ = api
    await _switch(client, sw)
    assert (await client.post("/api/admin/nodes", json=_node("pi-1", 1), headers=ADMIN)).status_code == 201
    assert (await client.post("/api/admin/nodes", json=_node("pi-2", 2, serial="cd34ef56"),
                              headers=ADMIN)).status_code == 201
    now = utcnow()
    sessions = sessions_for(load_agent_config(tmp_path / "config_agent.json"))  # the api fixture's
    with write_session(sessions) as s:
        mine = Reservation(node_name="pi-1", owner="alice@example.org", start=now - dt.timedelta(minutes=5),
                           end=now + dt.timedelta(hours=1), busy_until=now + dt.timedelta(hours=1),
                           status="deployed", params={"environment": "raspios"})
        past = Reservation(node_name="pi-2", owner="bob@example.org", start=now - dt.timedelta(hours=3),
                           end=now - dt.timedelta(hours=2), busy_until=now - dt.timedelta(hours=2),
                           status="ended")
        s.add_all([mine, past])
        s.flush()
        rid, old = mine.id, past.id
    ports.on[1] = True
    r = await client.post("/api/admin/switches/sw1/ports/1/off", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "off" and not ports.on[1]
    res = (await client.get(f"/api/reservations/{rid}", headers=USER)).json()
    # Still the user's and still deployed (the card is intact), with the reason and the way back.
    assert res["status"] == "deployed"
    last = res["events"][-1]
    assert last["level"] == "warning"
    assert last["message"] == ("pi-1 was powered off by the administrator root@example.org; "
                               "the system on its card is intact: Reboot powers it on again")
    r = await client.post("/api/admin/switches/sw1/ports/1/on", headers=ADMIN)
    assert r.status_code == 200 and ports.on[1]
    res = (await client.get(f"/api/reservations/{rid}", headers=USER)).json()
    assert res["events"][-1]["message"] == "pi-1 was powered on again by the administrator root@example.org"
    # A past reservation of another node is not touched.
    await client.post("/api/admin/switches/sw1/ports/2/off", headers=ADMIN)
    with sessions() as s:
        assert not s.get(Reservation, old).events  # type: ignore[union-attr]

