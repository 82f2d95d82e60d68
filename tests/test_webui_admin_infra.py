"""The admin infrastructure pages (nodes, switches, environments) against real agents:
a raspberry agent (real driver) on `piseduce sim rpi` (a PoE switch answering SNMP), and a
fake-driver agent announcing itself as g5k (a synced inventory: read-only). Then the pages in
headless Chromium, with screenshots for the docs."""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from markupsafe import escape

from helpers.admin_infra_fixtures import RaspberryAgent, connect, flashes, follow, node_form
from helpers.agent_helpers import free_port
from helpers.browser_helpers import SHOTS, check_find_box, table_buttons_off_screen
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, TOKEN
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import AgentProcess, WebuiProcess, add_user, webui_client, write_webui_config
from piseduce.snmp_budget import answer_budget_s
from piseduce.webui.routes.infra_forms import FormError, parse_properties

pytestmark = pytest.mark.usefixtures("fast_argon2")


def part(page: str, agent: str) -> str:
    """One agent's panel of a page."""
    return page.split(f'data-agent="{agent}"')[1].split('<div class="panel"')[0]


def row_of(page: str, agent: str, attr: str, key: str) -> str:
    return part(page, agent).split(f'{attr}="{key}"')[1].split("</tr>")[0]


# ---------------------------------------------------------------- unit


def test_properties_parsing_keeps_types_and_rejects_garbage() -> None:
    props = parse_properties("memory_gb=8\nroom = B204; ratio=0.5\nwifi=true\nserial=0123")
    assert props == {"memory_gb": 8, "room": "B204", "ratio": 0.5, "wifi": True, "serial": "0123"}
    with pytest.raises(FormError, match="not key=value"):
        parse_properties("just words")
    with pytest.raises(FormError, match="not key=value"):
        parse_properties("bad key=1")


# ---------------------------------------------------------------- pages


def test_admin_pages_are_for_admins_only(config: Path) -> None:
    with webui_client(config) as b:
        b.login("alice@example.org", "alice-password")
        for page in ("/admin/nodes", "/admin/switches", "/admin/environments"):
            r = b.get(page)
            assert r.status_code == 403 and "for administrators" in r.text
        r = b.post("/admin/nodes/1/status/pi-1", {"status": "maintenance"}, page="/settings")
        assert r.status_code == 403
        b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        # A state change without the form's CSRF token is refused before reaching any agent.
        r = b.post("/admin/nodes/1/status/pi-1", {"status": "maintenance"}, csrf=False)
        assert r.status_code == 403 and "CSRF" in r.text


def test_nodes_add_status_delete(config: Path, rpi: RaspberryAgent, g5k: AgentProcess) -> None:
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port), ("g5k-nancy", g5k.port))
        page = b.get("/admin/nodes").text
        # Both agents are listed; the g5k one is read-only (no buttons, no add form).
        assert 'data-agent="g5k-nancy"' in page and 'data-agent="rpi-lab"' in page
        g5k_part = part(page, "g5k-nancy")
        assert "read-only" in g5k_part and 'data-node="pi-1"' in g5k_part
        assert "Maintenance" not in g5k_part and "Add a node" not in g5k_part
        assert "Add a node to rpi-lab" in page and f'<option value="{rpi.switch["name"]}"' in page
        aid = int(re.search(r'action="/admin/nodes/(\d+)" id="add-node', page).group(1))  # type: ignore[union-attr]

        # Refused by the web UI (clear words, the values kept) and by the agent (its detail in words).
        r = b.post(f"/admin/nodes/{aid}", node_form(name="pi-1", port="x"), page="/admin/nodes")
        assert r.status_code == 400 and "PoE port: a whole number" in r.text and 'value="pi-1"' in r.text
        r = b.post(f"/admin/nodes/{aid}", node_form(name="pi-1", mac="zz:zz"), page="/admin/nodes")
        assert r.status_code == 400 and "Node not added: rpi-lab: mac:" in r.text
        r = b.post(
            f"/admin/nodes/{aid}", node_form(name="pi-1", switch="nope", port="1"), page="/admin/nodes"
        )
        assert r.status_code == 400 and "unknown switch" in r.text

        board = rpi.board(0)
        form = node_form(
            name=board["name"], ip=board["ip"], switch=rpi.switch["name"], port=str(board["port"]),
            ssh_port=str(board["ssh_port"]), model=board["model"], serial=board["serial"], mac=board["mac"],
            properties="memory_gb=4\nroom=<b>B204</b>",
        )  # fmt: skip
        page = follow(b, b.post(f"/admin/nodes/{aid}", form, page="/admin/nodes"))
        assert ("ok", f"Node {board['name']} added to rpi-lab.") in flashes(page)
        nodes = {n["name"]: n for n in rpi.api("GET", "/api/admin/nodes").json()}
        n = nodes[board["name"]]
        assert n["properties"] == {"memory_gb": 4, "room": "<b>B204</b>", "model": board["model"]}
        assert n["attrs"]["switch"] == rpi.switch["name"] and n["attrs"]["port"] == board["port"]
        assert "room=&lt;b&gt;B204&lt;/b&gt;" in page and "<b>B204" not in page  # escaped
        page = follow(b, b.post(f"/admin/nodes/{aid}", form, page="/admin/nodes"))
        assert "already exists" in page

        # maintenance <-> available, and clearing "broken" (what a failed wipe leaves).
        name = board["name"]
        page = follow(
            b, b.post(f"/admin/nodes/{aid}/status/{name}", {"status": "maintenance"}, page="/admin/nodes")
        )
        assert ("ok", f"{name} (rpi-lab) is now maintenance.") in flashes(page)
        assert rpi.api("GET", "/api/nodes").json()[0]["status"] == "maintenance"
        rpi.api("POST", f"/api/admin/nodes/{name}/status", json={"status": "broken"})
        page = b.get("/admin/nodes").text
        row = row_of(page, "rpi-lab", "data-node", name)
        assert "node-status-broken" in row and "Clear broken" in row
        b.post(f"/admin/nodes/{aid}/status/{name}", {"status": "available"}, page="/admin/nodes")
        assert rpi.api("GET", "/api/nodes").json()[0]["status"] == "available"
        page = follow(b, b.post(f"/admin/nodes/{aid}/status/{name}", {"status": "gone"}, page="/admin/nodes"))
        assert ("error", "No such agent, node or status.") in flashes(page)

        # Delete: refused (the agent's reason shown) while a reservation is active, then done.
        r = rpi.api("POST", "/api/reservations", json={"filters": [{"nodes": [name]}], "start": "now",
                                                         "duration_hours": 1})  # fmt: skip
        assert r.status_code == 201, r.text
        rid = r.json()["reservations"][0]["id"]
        page = follow(b, b.post(f"/admin/nodes/{aid}/delete/{name}", page="/admin/nodes"))
        assert (
            "error",
            f"Node {name} not deleted: rpi-lab: node {name} has 1 active reservation(s); destroy them first",
        ) in flashes(page)
        assert rpi.api("POST", f"/api/reservations/{rid}/destroy").status_code in (200, 202)
        wait_until_sync(
            lambda: rpi.api("GET", f"/api/reservations/{rid}").json()["status"] in ("ended", "cancelled"), 10
        )
        page = follow(b, b.post(f"/admin/nodes/{aid}/delete/{name}", page="/admin/nodes"))
        assert ("ok", f"Node {name} removed (kept for the history of its past reservations).") in flashes(
            page
        )
        assert "node-status-removed" in row_of(page, "rpi-lab", "data-node", name)

        # The g5k agent refuses additions; the web UI does not even ask.
        gid = int(re.search(r'id="agent-(\d+)" data-agent="g5k-nancy"', page).group(1))  # type: ignore[union-attr]
        page = follow(b, b.post(f"/admin/nodes/{gid}", node_form(name="x"), page="/admin/nodes"))
        assert ("error", "g5k-nancy: g5k nodes come from the testbed's inventory.") in flashes(page)


def test_switches_ports_power_and_refusals(config: Path, rpi: RaspberryAgent) -> None:
    sw = rpi.switch
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port))
        page = b.get("/admin/switches").text
        assert f'data-switch="{sw["name"]}"' in page and "community set" in page
        aid = int(re.search(r'action="/admin/switches/(\d+)" id="add-switch', page).group(1))  # type: ignore[union-attr]

        # The port table: one row per port, the master port's buttons disabled.
        frag = b.get(f"/admin/switches/{aid}/ports/{sw['name']}").text
        assert frag.count("<tr data-port=") == sw["port_count"]
        master = frag.split(f'<tr data-port="{sw["master_port"]}">')[1].split("</tr>")[0]
        assert "master (uplink" in master and master.count("disabled") == 2
        port1 = frag.split('<tr data-port="1">')[1].split("</tr>")[0]
        assert "disabled" not in port1 and "badge port-off" in port1

        # Power on / off over the agent's SNMP, and the agent's refusal for the master port.
        page = follow(b, b.post(f"/admin/switches/{aid}/power/{sw['name']}/1/on", page="/admin/switches"))
        assert any(k == "ok" and m.startswith(f"Switch {sw['name']} port 1") and m.endswith("power on.")
                   for k, m in flashes(page))  # fmt: skip
        ports = {p["port"]: p for p in rpi.api("GET", f"/api/admin/switches/{sw['name']}/ports").json()}
        assert ports[1]["status"] == "on"
        frag = b.get(f"/admin/switches/{aid}/ports/{sw['name']}").text
        assert "badge port-on" in frag.split('<tr data-port="1">')[1].split("</tr>")[0]
        b.post(f"/admin/switches/{aid}/power/{sw['name']}/1/off", page="/admin/switches")
        ports = {p["port"]: p for p in rpi.api("GET", f"/api/admin/switches/{sw['name']}/ports").json()}
        assert ports[1]["status"] == "off"
        page = follow(
            b,
            b.post(
                f"/admin/switches/{aid}/power/{sw['name']}/{sw['master_port']}/off", page="/admin/switches"
            ),
        )
        errors = [m for k, m in flashes(page) if k == "error"]
        assert errors and errors[0].startswith(f"Port {sw['master_port']} not powered off: rpi-lab: ")
        assert "master" in errors[0]

        # Add: the web UI's checks, the agent's, then a switch nobody answers for: the port table
        # says so within the hub's deadline, and the agent is not marked down for it.
        form = {
            "name": "ghost",
            "ip": "127.0.0.1",
            "snmp_port": "x",
            "community": "s3cret-community",
            "poe_oid": "1.3.6.1.2.1.105.1.1.1.3.1",
            "oid_offset": "0",
            "port_count": "4",
            "master_port": "0",
            "power_oid": "",
        }
        r = b.post(f"/admin/switches/{aid}", form, page="/admin/switches")
        assert r.status_code == 400 and "SNMP port: a whole number" in r.text and "s3cret" not in r.text
        r = b.post(
            f"/admin/switches/{aid}", {**form, "snmp_port": "161", "poe_oid": "1.3.x"}, page="/admin/switches"
        )
        assert r.status_code == 400 and "Switch not added: rpi-lab: poe_oid: must be a numeric OID" in r.text
        bad_offset = {**form, "snmp_port": "161", "power_oid_offset": "-1"}
        r = b.post(f"/admin/switches/{aid}", bad_offset, page="/admin/switches")
        assert r.status_code == 400 and "Power OID offset" in r.text
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))  # bound, silent: SNMP requests vanish
        try:
            ghost_port = str(udp.getsockname()[1])
            linksys = {"power_oid": "1.3.6.1.4.1.3955.1000.201.108.1.1.5.1", "power_oid_offset": "48"}
            ghost_form = {**form, **linksys, "snmp_port": ghost_port}
            page = follow(b, b.post(f"/admin/switches/{aid}", ghost_form, page="/admin/switches"))
            assert ("ok", "Switch ghost added to rpi-lab.") in flashes(page) and "s3cret" not in page
            ghost = rpi.api("GET", "/api/admin/switches/ghost").json()
            assert (ghost["power_oid"], ghost["power_oid_offset"]) == (linksys["power_oid"], 48)
            assert "1.3.6.1.4.1.3955.1000.201.108.1.1.5.1</span> + offset 48" in page

            # Edit: the form comes prefilled; an empty community keeps the stored one; a bad value
            # changes nothing and says which field.
            edit_form = page.split(f'action="/admin/switches/{aid}/edit/ghost"')[1].split("</form>")[0]
            assert f'name="snmp_port" type="number" min="1" max="65535" value="{ghost_port}"' in edit_form
            edit = {**ghost_form, "community": "", "port_count": "x"}
            page = follow(b, b.post(f"/admin/switches/{aid}/edit/ghost", edit, page="/admin/switches"))
            errors = [m for k, m in flashes(page) if k == "error"]
            assert errors and errors[0].startswith("Switch ghost not changed: Port count")
            # The edit form comes back open, with what was typed in it.
            again = page.split(f'action="/admin/switches/{aid}/edit/ghost"')[0].rsplit("<details", 1)[1]
            assert again.startswith(' class="add-form edit-form" open')
            kept = page.split(f'action="/admin/switches/{aid}/edit/ghost"')[1].split("</form>")[0]
            assert 'name="port_count" type="number" min="1" max="1024" value="x"' in kept
            assert rpi.api("GET", "/api/admin/switches/ghost").json()["port_count"] == 4
            edit = {**ghost_form, "community": "", "port_count": "6", "power_oid_offset": "0"}
            page = follow(b, b.post(f"/admin/switches/{aid}/edit/ghost", edit, page="/admin/switches"))
            assert ("ok", "Switch ghost on rpi-lab saved.") in flashes(page) and "s3cret" not in page
            ghost = rpi.api("GET", "/api/admin/switches/ghost").json()
            assert (ghost["port_count"], ghost["power_oid_offset"], ghost["community_set"]) == (6, 0, True)
            r = b.post(f"/admin/switches/{aid}/edit/ghost", {**edit, "port_count": "7"}, csrf=False)
            assert r.status_code == 403
            assert rpi.api("GET", "/api/admin/switches/ghost").json()["port_count"] == 6
            t0 = time.monotonic()
            frag = b.get(f"/admin/switches/{aid}/ports/ghost").text
            # The agent's SNMP retries run out within the page's budget for the switch: its
            # answer, not the page's deadline, says the switch is silent.
            assert time.monotonic() - t0 < answer_budget_s() + 1.0
            assert "Switch ghost unreachable: " in frag and "No SNMP response" in frag, frag
            assert "No answer after the agent&#39;s retries: check the switch&#39;s IP" in frag, frag
            page = b.get("/admin/nodes").text
            assert 'data-agent="rpi-lab"' in page and "unreachable" not in page
        finally:
            udp.close()

        # Delete: refused while a node is on the switch (the agent's reason), done otherwise.
        board = rpi.board(1)
        body = {k: board[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")}
        assert rpi.api("POST", "/api/admin/nodes", json=body).status_code == 201
        page = follow(b, b.post(f"/admin/switches/{aid}/delete/{sw['name']}", page="/admin/switches"))
        assert any(k == "error" and f"powers node(s) {board['name']}" in m for k, m in flashes(page))
        page = follow(b, b.post(f"/admin/switches/{aid}/delete/ghost", page="/admin/switches"))
        assert ("ok", "Switch ghost deleted from rpi-lab.") in flashes(page)
        assert 'data-switch="ghost"' not in page
        rpi.api("DELETE", f"/api/admin/nodes/{board['name']}")


class BusyRelay:
    """A UDP relay to a switch that holds every datagram for the first `busy` seconds after the
    first one, then forwards all of them (a switch whose management CPU is busy for a moment)."""

    def __init__(self, target: tuple[str, int], busy: float) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect(target)
        self.busy, self.until, self.client = busy, 0.0, None
        self.held: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.front.getsockname()[1])

    def _run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.front, self.up], [], [], 0.05)
            for sock in ready:
                data, addr = sock.recvfrom(65536)
                if sock is self.up:
                    if self.client is not None:
                        self.front.sendto(data, self.client)
                    continue
                self.client = addr
                self.until = self.until or time.monotonic() + self.busy
                self.held.append(data)
            if self.held and time.monotonic() >= self.until:
                for data in self.held:
                    self.up.send(data)
                self.held.clear()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.front.close()
        self.up.close()


def test_switches_page_shows_the_boot_network_config(config: Path, rpi: RaspberryAgent) -> None:
    board = rpi.board(0)
    node = {"name": "pi-netcfg", "ip": board["ip"], "switch": rpi.switch["name"], "port": board["port"],
            "model": board["model"], "serial": board["serial"], "mac": board["mac"]}
    r = rpi.api("POST", "/api/admin/nodes", json=node)
    assert r.status_code == 201, r.text
    try:
        answer = rpi.api("GET", "/api/admin/network-config")
        assert answer.status_code == 200, answer.text
        with webui_client(config) as b:
            connect(b, ("rpi-lab", rpi.port))
            page = b.get("/admin/switches").text
        block = page.split("<details class=\"add-form netconfig\" data-netconfig>")[1].split("</details>")[0]
        assert f"dhcp-host={board['mac']},{board['ip']},pi-netcfg" in block
        assert str(escape(answer.json()["dnsmasq"])) in block  # the agent's text, as Jinja escapes it
        assert 'class="small secondary copy"' in block
    finally:
        assert rpi.api("DELETE", "/api/admin/nodes/pi-netcfg").status_code == 200


def test_a_switch_that_answers_late_is_waited_for_not_blamed(config: Path, rpi: RaspberryAgent) -> None:
    """Under load a switch answers after the web UI's usual deadline for agent calls: the port table
    waits for the agent's SNMP retries (snmp_budget), and a table that still comes too late says so
    without blaming the switch's settings."""
    from piseduce.config import load_webui_config

    sw = rpi.switch
    hub_timeout = load_webui_config(config).agent_timeout_seconds
    relay = BusyRelay((sw["ip"], int(sw["snmp_port"])), busy=hub_timeout + 0.5)
    try:
        with webui_client(config) as b:
            connect(b, ("rpi-lab", rpi.port))
            page = b.get("/admin/switches").text
            aid = int(re.search(r'action="/admin/switches/(\d+)" id="add-switch', page).group(1))  # type: ignore[union-attr]
            form = {"name": "busy", "ip": "127.0.0.1", "snmp_port": str(relay.port),
                    "community": sw["community"], "poe_oid": sw["poe_oid"], "oid_offset": "0",
                    "port_count": str(sw["port_count"]), "master_port": "0", "power_oid": ""}
            page = follow(b, b.post(f"/admin/switches/{aid}", form, page="/admin/switches"))
            assert ("ok", "Switch busy added to rpi-lab.") in flashes(page), flashes(page)
            t0 = time.monotonic()
            frag = b.get(f"/admin/switches/{aid}/ports/busy").text
            took = time.monotonic() - t0
            assert frag.count("<tr data-port=") == sw["port_count"], frag
            assert hub_timeout < took < answer_budget_s() + 1, took
    finally:
        relay.close()
    assert answer_budget_s() > hub_timeout
    # The words of a late answer: not a wrong configuration, and what to do.
    from piseduce.webui.routes.admin_switches import _switch_problem

    words = _switch_problem(SimpleNamespace(name="rpi-lab"), "sw1", None, True, 5.0)  # type: ignore[arg-type]
    assert words.startswith("Switch sw1 did not answer in time") and "may be busy" in words
    assert "Reload the page; if this persists, check" in words and "unreachable" not in words


def test_switch_form_snmp_v3(config: Path, rpi: RaspberryAgent) -> None:
    """The Switches form registers the simulated switch again in SNMPv3 (authPriv SHA/AES): the
    agent powers its ports with the v3 user; the pass phrases never come back in a page, and an
    edit that leaves them empty keeps them."""
    sw = rpi.switch
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port))
        page = b.get("/admin/switches").text
        aid = int(re.search(r'action="/admin/switches/(\d+)" id="add-switch', page).group(1))  # type: ignore[union-attr]
        add = page.split(f'id="add-switch-{aid}"')[1].split("</form>")[0]
        assert 'name="snmp_version"' in add and '<option value="v3">' in add and 'name="v3_priv_key"' in add
        form = {
            "name": "sw-v3", "ip": sw["ip"], "snmp_port": str(sw["snmp_port"]), "community": "",
            "poe_oid": sw["poe_oid"], "oid_offset": "0", "port_count": str(sw["port_count"]),
            "master_port": str(sw["master_port"]), "power_oid": sw["power_oid"], "power_oid_offset": "0",
            "snmp_version": "v3", "v3_user": sw["v3_user"], "v3_auth_protocol": "SHA",
            "v3_priv_protocol": "AES", "v3_auth_key": sw["v3_auth_key"], "v3_priv_key": sw["v3_priv_key"],
        }
        r = b.post(f"/admin/switches/{aid}", {**form, "v3_user": ""}, page="/admin/switches")
        assert r.status_code == 400 and "v3 user: the SNMPv3 (USM) user name of the switch" in r.text
        assert sw["v3_auth_key"] not in r.text
        r = b.post(f"/admin/switches/{aid}", {**form, "snmp_version": "v9"}, page="/admin/switches")
        assert r.status_code == 400 and "SNMP version: one of v2c, v1, v3" in r.text
        r = b.post(f"/admin/switches/{aid}", {**form, "v3_priv_key": "short"}, page="/admin/switches")
        assert r.status_code == 400 and "v3 privacy pass phrase: 8 to 128 characters" in r.text
        # One switch is one record: a second record of the same address is refused, naming the first.
        page = follow(b, b.post(f"/admin/switches/{aid}", form, page="/admin/switches"))
        assert any(k == "error" and f"switch {sw['name']} is already the switch at" in m
                   for k, m in flashes(page)), flashes(page)  # fmt: skip
        # So the v2c record gives way to the v3 one for this test (and comes back at its end).
        assert rpi.api("DELETE", f"/api/admin/switches/{sw['name']}").status_code == 200
        page = follow(b, b.post(f"/admin/switches/{aid}", form, page="/admin/switches"))
        assert ("ok", "Switch sw-v3 added to rpi-lab.") in flashes(page)
        assert sw["v3_auth_key"] not in page and sw["v3_priv_key"] not in page
        spec = page.split('data-switch="sw-v3"')[1].split('class="small muted spec">')[1].split("</div>")[0]
        assert "SNMP v3 user" in spec and "SHA/AES, pass phrases set" in spec
        got = rpi.api("GET", "/api/admin/switches/sw-v3").json()
        assert (got["snmp_version"], got["v3_user"], got["v3_keys_set"]) == ("v3", sw["v3_user"], True)
        # The agent reads and powers the ports with the v3 user.
        frag = b.get(f"/admin/switches/{aid}/ports/sw-v3").text
        assert frag.count("<tr data-port=") == sw["port_count"] and "unreachable" not in frag
        follow(b, b.post(f"/admin/switches/{aid}/power/sw-v3/2/on", page="/admin/switches"))
        ports = rpi.api("GET", "/api/admin/switches/sw-v3/ports").json()
        assert {p["port"]: p["status"] for p in ports}[2] == "on"
        # An edit with empty pass phrases keeps them (the switch still answers) and shows v3 chosen.
        edit_form = page.split(f'action="/admin/switches/{aid}/edit/sw-v3"')[1].split("</form>")[0]
        assert '<option value="v3" selected>' in edit_form and sw["v3_auth_key"] not in edit_form
        edit = {**form, "v3_auth_key": "", "v3_priv_key": "", "port_count": str(sw["port_count"])}
        page = follow(b, b.post(f"/admin/switches/{aid}/edit/sw-v3", edit, page="/admin/switches"))
        assert ("ok", "Switch sw-v3 on rpi-lab saved.") in flashes(page)
        assert "unreachable" not in b.get(f"/admin/switches/{aid}/ports/sw-v3").text
        b.post(f"/admin/switches/{aid}/power/sw-v3/2/off", page="/admin/switches")
        assert rpi.api("DELETE", "/api/admin/switches/sw-v3").status_code == 200
        assert rpi.api("POST", "/api/admin/switches", json=sw).status_code == 201


def test_environments_scan_add_edit_delete(config: Path, rpi: RaspberryAgent) -> None:
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port))
        page = b.get("/admin/environments").text
        aid = int(re.search(r'action="/admin/environments/(\d+)/scan"', page).group(1))  # type: ignore[union-attr]
        page = follow(b, b.post(f"/admin/environments/{aid}/scan", page="/admin/environments"))
        msgs = flashes(page)
        assert ("ok", "Scan of rpi-lab's env_path: 2 added (tiny-a, tiny-b), 0 updated.") in msgs
        assert any(k == "error" and m.startswith("Skipped broken.img.json: image:") for k, m in msgs)
        row = page.split('data-env="tiny-a"')[1].split("</tr>")[0]
        envs = {e["name"]: e for e in rpi.api("GET", "/api/admin/environments").json()}
        assert (
            envs["tiny-a"]["checksum"][:12] in row
            and envs["tiny-a"]["checksum"] not in row.split("title=")[0]
        )
        assert "tiny-a.img" in row and ">pi<" in row

        form = {
            "name": "spare",
            "image": "nothere.img",
            "size": "4096",
            "sector_start": "0",
            "ssh_user": "root",
            "checksum": "",
            "description": "<script>x</script>",
            "state": "available",
            "owner": "",
        }
        r = b.post(f"/admin/environments/{aid}", form, page="/admin/environments")
        assert r.status_code == 400 and "Environment not added: rpi-lab: image: no file" in r.text
        assert "<script>x</script>" not in r.text and "&lt;script&gt;x&lt;/script&gt;" in r.text
        page = follow(b, b.post(f"/admin/environments/{aid}", {**form, "image": "spare.img", "web": "on"},
                                page="/admin/environments"))  # fmt: skip
        assert ("ok", "Environment spare added on rpi-lab.") in flashes(page)
        assert rpi.api("GET", "/api/admin/environments/spare").json()["web"] is True

        # Edit: the form comes filled in; the name cannot change.
        page = b.get(f"/admin/environments?agent={aid}&edit=spare").text
        assert 'name="editing" value="spare"' in page and 'value="spare.img"' in page and "checked" in page
        edit = {
            **form,
            "image": "spare.img",
            "editing": "spare",
            "ssh_user": "pi",
            "description": "spare one",
        }
        page = follow(b, b.post(f"/admin/environments/{aid}", edit, page="/admin/environments"))
        assert ("ok", "Environment spare updated on rpi-lab.") in flashes(page)
        env = rpi.api("GET", "/api/admin/environments/spare").json()
        assert env["ssh_user"] == "pi" and env["web"] is False and env["description"] == "spare one"
        r = b.post(f"/admin/environments/{aid}", {**edit, "name": "other"}, page="/admin/environments")
        assert r.status_code == 400 and "cannot be renamed" in r.text

        page = follow(b, b.post(f"/admin/environments/{aid}/delete/spare", page="/admin/environments"))
        assert (
            "ok",
            "Environment spare deleted from rpi-lab (the image file stays in env_path).",
        ) in flashes(page)
        assert 'data-env="spare"' not in page and (rpi.folder / "environments" / "spare.img").exists()
        page = follow(b, b.post(f"/admin/environments/{aid}/delete/spare", page="/admin/environments"))
        assert ("error", "Environment spare not deleted: rpi-lab: environment spare not found") in flashes(
            page
        )
        # The trail: the scan, the add and the edit (not the refused ones), then the delete.
        import json

        rows = [json.loads(x) for x in b.get("/admin/audit/export?action=environment.*").text.splitlines()]
        assert [(e["action"], e["target"]["id"], e["detail"].get("change")) for e in rows] == [
            ("environment.scan", "rpi-lab", None),
            ("environment.save", "rpi-lab/spare", "added"),
            ("environment.save", "rpi-lab/spare", "updated"),
            ("environment.delete", "rpi-lab/spare", None),
        ]
        assert rows[0]["detail"]["added"] == ["tiny-a", "tiny-b"]


def test_dead_agent_never_stalls_the_pages(config: Path, rpi: RaspberryAgent) -> None:
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port))
        dead_port = free_port()
        # Stored directly: Add Agent refuses an unreachable agent.
        _store_agent(config, "gone", dead_port)
        for page in ("/admin/nodes", "/admin/switches", "/admin/environments"):
            t0 = time.monotonic()
            html = b.get(page).text
            assert time.monotonic() - t0 < 2.5
            assert 'data-agent="rpi-lab"' in html
            if page == "/admin/nodes":
                assert "gone: unreachable" in html


def _store_agent(config: Path, name: str, port: int) -> None:
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory
    from piseduce.webui.models import Agent

    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    fernet = crypto.load_fernet(cfg.key_path)
    with session_factory(engine)() as s, s.begin():
        s.add(Agent(name=name, host="127.0.0.1", port=port, token=crypto.encrypt_str(fernet, TOKEN),
                    status="unreachable", node_type="raspberry"))  # fmt: skip
    engine.dispose()


# ---------------------------------------------------------------- browser


@pytest.mark.browser
def test_browser_admin_pages_and_screenshots(tmp_path: Path, rpi: RaspberryAgent, g5k: AgentProcess) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is not installed")
    from test_webui_browser import ARGS, login, submit_agent_form

    config = write_webui_config(tmp_path / "webui", agent_timeout_seconds=1.5)
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    board = rpi.board(0)
    body = {k: board[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")}
    body["properties"] = {"memory_gb": 4}
    rpi.api("POST", "/api/admin/nodes", json=body)
    rpi.api("POST", "/api/admin/environments/scan")
    web = WebuiProcess(config)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(15_000)
                asked: list[str] = []

                def confirm(dialog: Any) -> None:
                    asked.append(dialog.message)
                    dialog.accept()

                page.on("dialog", confirm)
                login(page, web.url, ADMIN_EMAIL, ADMIN_PASSWORD)
                for name, port in (("rpi-lab", rpi.port), ("g5k-nancy", g5k.port)):
                    page.goto(f"{web.url}/admin/agents")
                    submit_agent_form(page, name, port)

                page.click("text=(admin) Nodes")
                row = page.locator(f'tr[data-node="{board["name"]}"]')
                row.locator("button:has-text('Maintenance')").click()
                page.wait_for_selector(f"text={board['name']} (rpi-lab) is now maintenance.")
                assert asked and "Maintenance" in asked[-1]
                page.locator('[data-agent="rpi-lab"] summary:has-text("Add a node")').click()
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "admin_nodes.png"), full_page=True)
                row.locator("button:has-text('Make available')").click()
                page.wait_for_selector(f"text={board['name']} (rpi-lab) is now available.")

                page.click("text=(admin) Switches")
                port = page.locator(f'[data-switch="{rpi.switch["name"]}"] tr[data-port="{board["port"]}"]')
                port.locator("button:has-text('Power on')").click()
                page.wait_for_selector(f"text=port {board['port']} ({board['name']}): power on.")
                assert "Power on port" in asked[-1]
                port.locator(".badge.port-on").wait_for()
                master = page.locator(f'tr[data-port="{rpi.switch["master_port"]}"] button').first
                assert master.is_disabled()
                page.screenshot(path=str(SHOTS / "admin_switches.png"), full_page=True)
                port.locator("button:has-text('Power off')").click()
                port.locator(".badge.port-off").wait_for()
                # Edit in the page: the prefilled form saves as is, and the community (left empty)
                # is kept: the port table still reads the switch afterwards.
                switch = page.locator(f'[data-switch="{rpi.switch["name"]}"]')
                switch.locator("details.edit-form summary").click()
                switch.locator("details.edit-form button[type=submit]").click()
                page.wait_for_selector(f"text=Switch {rpi.switch['name']} on rpi-lab saved.")
                port.locator(".badge.port-off").wait_for()

                page.click("text=(admin) Environments")
                page.locator('tr[data-env="tiny-a"]').wait_for()
                page.screenshot(path=str(SHOTS / "admin_environments.png"), full_page=True)

                # Every Find box finds what it promises, and only that (a node on a port too).
                assert check_find_box(page, "#envs-filter") >= {"name", "image", "state"}
                page.click("text=(admin) Switches")
                port.locator(".badge").wait_for()
                assert check_find_box(page, "#switches-filter") == {"name", "ip", "node"}
                page.click("text=(admin) Nodes")
                fields = {"name", "status", "ip", "switch", "serial", "mac", "property"}
                assert check_find_box(page, "#nodes-filter") >= fields

                # On a phone every button of every table is on the screen, with no sideways scroll.
                page.set_viewport_size({"width": 390, "height": 900})
                for path in ("/admin/nodes", "/admin/switches", "/admin/environments", "/admin/agents"):
                    page.goto(f"{web.url}{path}")
                    page.wait_for_load_state("networkidle")
                    assert page.locator("main table button").count() > 0, path
                    assert table_buttons_off_screen(page) == [], path
                    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                    assert width[0] <= width[1], (path, width)
                page.goto(f"{web.url}/admin/switches")
                port.locator(".badge").wait_for()
                page.screenshot(path=str(SHOTS / "phone_admin_switches.png"), full_page=True)
                # The boot network's dnsmasq file, opened: its long lines scroll inside their box.
                page.locator("details[data-netconfig] summary").first.click()
                page.locator("details[data-netconfig] pre").first.wait_for()
                width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                assert width[0] <= width[1], ("Boot network open", width)
            finally:
                browser.close()
    finally:
        web.stop()
        rpi.api("DELETE", f"/api/admin/nodes/{board['name']}")
