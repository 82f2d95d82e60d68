"""The audit trail of the admin's infrastructure actions on a raspberry agent over the simulated
PoE switch (real SNMP): a port powered on and off, a refused power action (not recorded), a
switch added with its SNMP community (never in the trail), a node added, its status changed and
deleted, and the agent removed."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
from pathlib import Path

import pytest

from helpers.admin_infra_fixtures import RaspberryAgent, connect, flashes, follow, node_form
from helpers.webui_fixtures import webui_client
from piseduce.config import load_webui_config

pytestmark = pytest.mark.usefixtures("fast_argon2")
COMMUNITY = "s3cret-community-4u"


def test_power_switch_and_node_actions_are_recorded_without_the_community(
    config: Path, rpi: RaspberryAgent
) -> None:
    sw = rpi.switch
    with webui_client(config, client=("203.0.113.9", 40100)) as b:
        connect(b, ("rpi-lab", rpi.port))
        page = b.get("/admin/switches").text
        found = re.search(r'action="/admin/switches/(\d+)" id="add-switch', page)
        assert found
        aid = int(found.group(1))
        for state in ("on", "off"):
            url = f"/admin/switches/{aid}/power/{sw['name']}/1/{state}"
            page = follow(b, b.post(url, page="/admin/switches"))
            assert any(k == "ok" for k, _ in flashes(page)), page
        master = sw["master_port"]
        follow(b, b.post(f"/admin/switches/{aid}/power/{sw['name']}/{master}/off", page="/admin/switches"))

        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        try:
            form = {"name": "audited", "ip": "127.0.0.1", "snmp_port": str(udp.getsockname()[1]),
                    "community": COMMUNITY, "poe_oid": "1.3.6.1.2.1.105.1.1.1.3.1", "oid_offset": "0",
                    "port_count": "4", "master_port": "0", "power_oid": ""}
            page = follow(b, b.post(f"/admin/switches/{aid}", form, page="/admin/switches"))
            assert ("ok", "Switch audited added to rpi-lab.") in flashes(page)
        finally:
            udp.close()

        nodes = "/admin/nodes"
        body = node_form(name="pi-audit", ip="10.9.9.9", switch="audited", port="2", model="RPI4B",
                         serial="1234abcd", mac="dc:a6:32:00:00:99")
        page = follow(b, b.post(f"/admin/nodes/{aid}", body, page=nodes))
        assert any(k == "ok" for k, _ in flashes(page)), flashes(page)
        page = follow(b, b.post(f"/admin/nodes/{aid}/status/pi-audit", {"status": "maintenance"}, page=nodes))
        assert any(k == "ok" for k, _ in flashes(page)), flashes(page)
        follow(b, b.post(f"/admin/nodes/{aid}/delete/pi-audit", page=nodes))
        follow(b, b.post(f"/admin/switches/{aid}/delete/audited", page="/admin/switches"))
        assert b.post(f"/admin/agents/{aid}/delete", page="/admin/agents").status_code == 303

        rows = [json.loads(x) for x in b.get("/admin/audit/export").text.splitlines()]
    got = [(e["action"], e["target"]["kind"], e["target"]["id"]) for e in rows if e["action"] != "login"]
    assert got == [
        ("agent.add", "agent", str(aid)),
        ("port.power", "port", f"rpi-lab/{sw['name']}/1"),
        ("port.power", "port", f"rpi-lab/{sw['name']}/1"),
        ("switch.add", "switch", "rpi-lab/audited"),
        ("node.add", "node", "rpi-lab/pi-audit"),
        ("node.status", "node", "rpi-lab/pi-audit"),
        ("node.delete", "node", "rpi-lab/pi-audit"),
        ("switch.delete", "switch", "rpi-lab/audited"),
        ("agent.remove", "agent", str(aid)),
    ]
    assert [e["detail"]["state"] for e in rows if e["action"] == "port.power"] == ["on", "off"]
    assert {e["source"] for e in rows} == {"203.0.113.9"}
    path = load_webui_config(config).database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        stored = repr(list(con.execute("SELECT * FROM audit_events")))
    assert COMMUNITY not in stored and COMMUNITY[:8] not in stored
