"""The admin infrastructure pages (nodes, switches, environments) against real agents:
a raspberry agent (real driver) on `piseduce sim rpi` (a PoE switch answering SNMP), and a
fake-driver agent announcing itself as g5k (a synced inventory: read-only). Then the pages in
headless Chromium, with screenshots for the docs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import TOKEN, free_port, piseduce_cmd, subprocess_env, wait_http
from piseduce.webui.routes.admin_infra import FormError, parse_properties
from webui_fixtures import (  # noqa: F401 - fast_argon2 is a fixture
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    AgentProcess,
    Browser,
    WebuiProcess,
    add_agent_form,
    add_user,
    fast_argon2,
    wait_until,
    webui_client,
    write_webui_config,
)

ADMIN_HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "X-Piseduce-User": "root@example.org",
    "X-Piseduce-Role": "admin",
}
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "img"
FLASH_RE = re.compile(r'<div class="flash (\w+)" role="(?:status|alert)">([^<]*)</div>')


class RaspberryAgent:
    """`piseduce sim rpi` (2 boards) and a raspberry agent's API (no executor) knowing its switch."""

    def __init__(self, folder: Path) -> None:
        import asyncssh

        from piseduce import db
        from piseduce.config import load_agent_config

        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        key = asyncssh.generate_private_key("ssh-ed25519", comment="piseduce-agent")
        agent_key = folder / "agent_key"
        agent_key.write_bytes(key.export_private_key())
        agent_key.chmod(0o600)
        (folder / "agent_key.pub").write_text(key.export_public_key().decode())
        env_dir = folder / "environments"
        env_dir.mkdir()
        # Two small images with sidecars (what the image builder writes), found by "Scan env_path".
        for name in ("tiny-a", "tiny-b"):
            (env_dir / f"{name}.img").write_bytes(name.encode() * 1000)
            sidecar = {"name": name, "image": f"{name}.img", "size": 6000, "ssh_user": "pi"}
            (env_dir / f"{name}.img.json").write_text(json.dumps(sidecar))
        (env_dir / "spare.img").write_bytes(b"\0" * 4096)
        (env_dir / "broken.img.json").write_text('{"name": "broken", "image": "missing.img"}')
        inventory_file = folder / "inventory.json"
        self._spawn(
            "sim.log", "sim", "rpi", "--boards", "2", "--state-dir", str(folder / "sim"),
            "--tftp-root", str(folder / "tftpboot"), "--nfs-root", str(folder / "nfs"),
            "--time-scale", "100", "--seed", "3", "--inventory-file", str(inventory_file),
            "--agent-pubkey", str(folder / "agent_key.pub"),
        )  # fmt: skip
        wait_until(lambda: inventory_file.exists() and inventory_file.stat().st_size > 0, timeout=30)
        time.sleep(0.2)
        self.inventory = json.loads(inventory_file.read_text())
        self.port = free_port()
        config = folder / "config_agent.json"
        config.write_text(
            json.dumps(
                {
                    "auth_token": [TOKEN],
                    "port_number": self.port,
                    "host": "127.0.0.1",
                    "node_type": "raspberry",
                    "name": "rpi-lab",
                    "db_url": "sqlite:///agent.db",
                    "tftp_root": "tftpboot",
                    "nfs_root": "nfs",
                    "env_path": "environments/",
                    "ssh_key_file": str(agent_key),
                    "known_hosts_file": "known_hosts",
                    "turnaround_minutes": 0,
                }
            )
        )
        db.upgrade("agent", load_agent_config(config).database_url)
        self._spawn("api.log", "agent", "api", str(config))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.url}/api/health", timeout=30)
        r = httpx.post(f"{self.url}/api/admin/switches", json=self.inventory["switch"], headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text

    @property
    def switch(self) -> dict[str, Any]:
        sw: dict[str, Any] = self.inventory["switch"]
        return sw

    def board(self, i: int) -> dict[str, Any]:
        b: dict[str, Any] = self.inventory["boards"][i]
        return b

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=ADMIN_HEADERS, timeout=10, **kw)

    def _spawn(self, log: str, *args: str) -> None:
        out = open(self.folder / log, "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                piseduce_cmd(*args),
                cwd=self.folder,
                env=subprocess_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def rpi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaspberryAgent]:
    a = RaspberryAgent(tmp_path_factory.mktemp("rpi"))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def g5k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """A fake-driver agent announcing node_type g5k (the web UI shows it read-only)."""
    from piseduce import crypto

    folder = tmp_path_factory.mktemp("g5k") / "g5k-nancy"
    folder.mkdir()
    crypto.generate_key_file(folder / "agent.key")
    a = AgentProcess(folder, nodes=2, executor=False, node_type="g5k", key_file="agent.key")
    yield a
    a.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, "alice@example.org", "alice-password")
    return cfg


pytestmark = pytest.mark.usefixtures("fast_argon2")


def flashes(html: str) -> list[tuple[str, str]]:
    import html as h

    return [(k, h.unescape(m)) for k, m in FLASH_RE.findall(html)]


def follow(b: Browser, r: httpx.Response) -> str:
    """The page after a POST: its own body (400) or the page it redirects to (303)."""
    if r.status_code == 303:
        return b.get(r.headers["location"]).text
    return r.text


def part(page: str, agent: str) -> str:
    """One agent's panel of a page."""
    return page.split(f'data-agent="{agent}"')[1].split('<div class="panel"')[0]


def row_of(page: str, agent: str, attr: str, key: str) -> str:
    return part(page, agent).split(f'{attr}="{key}"')[1].split("</tr>")[0]


def connect(b: Browser, *agents: tuple[str, int]) -> None:
    b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    for name, port in agents:
        r = b.post("/admin/agents", add_agent_form(name, port), page="/admin/agents")
        assert r.status_code == 303, r.text


def node_form(**kw: str) -> dict[str, str]:
    return {"name": "", "ip": "", "switch": "", "port": "", "ssh_port": "22", "model": "", "serial": "",
            "mac": "", "properties": "", **kw}  # fmt: skip


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
        wait_until(
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
            assert time.monotonic() - t0 < 3.0
            assert "Switch ghost unreachable: rpi-lab got no SNMP answer within 1 s" in frag
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
    from test_webui_browser import ARGS, login

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
                    page.fill("#a-name", name)
                    page.fill("#a-host", "127.0.0.1")
                    page.fill("#a-port", str(port))
                    page.fill("#a-token", TOKEN)
                    page.click("#add-agent button[type=submit]")
                    page.locator(f'tr[data-agent="{name}"] >> text=connected').wait_for()

                page.click("text=(admin) Nodes")
                row = page.locator(f'tr[data-node="{board["name"]}"]')
                row.locator("button:has-text('Maintenance')").click()
                page.wait_for_selector(f"text={board['name']} (rpi-lab) is now maintenance.")
                assert asked and "Maintenance" in asked[-1]
                page.locator('[data-agent="rpi-lab"] summary').click()
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
            finally:
                browser.close()
    finally:
        web.stop()
        rpi.api("DELETE", f"/api/admin/nodes/{board['name']}")
