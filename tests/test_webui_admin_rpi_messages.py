"""The admin pages show a raspberry agent's refusals in its words (a taken PoE port, a bad MAC),
and the Environments page sets the default environment of the deploy forms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers.admin_infra_fixtures import RaspberryAgent, connect, flashes, follow, node_form
from helpers.webui_fixtures import webui_client

pytestmark = pytest.mark.usefixtures("fast_argon2")


def test_nodes_page_shows_port_and_mac_refusals_in_words(config: Path, rpi: RaspberryAgent) -> None:  # noqa: F811
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port))
        page = b.get("/admin/nodes").text
        aid = int(re.search(r'action="/admin/nodes/(\d+)" id="add-node', page).group(1))  # type: ignore[union-attr]
        sw, first = rpi.switch, rpi.board(0)
        form = node_form(name=first["name"], ip=first["ip"], switch=sw["name"], port=str(first["port"]),
                         serial=first["serial"], mac=first["mac"])
        page = follow(b, b.post(f"/admin/nodes/{aid}", form, page="/admin/nodes"))
        assert ("ok", f"Node {first['name']} added to rpi-lab.") in flashes(page)
        # Another node on the same port, on the uplink, beyond the switch: refused with the reason.
        taken = {**form, "name": "pi-9", "serial": "abcd0009", "mac": ""}
        r = b.post(f"/admin/nodes/{aid}", taken, page="/admin/nodes")
        assert r.status_code == 400, r.text
        assert (f"Node not added: rpi-lab: port {first['port']} of switch {sw['name']} already powers "
                f"{first['name']}; free ports: 2") in r.text
        r = b.post(f"/admin/nodes/{aid}", {**taken, "port": str(sw["master_port"])}, page="/admin/nodes")
        assert r.status_code == 400 and "is its master (uplink) port" in r.text
        r = b.post(f"/admin/nodes/{aid}", {**taken, "port": "99"}, page="/admin/nodes")
        assert r.status_code == 400 and f"switch {sw['name']} has ports 1 to {sw['port_count']}" in r.text
        r = b.post(f"/admin/nodes/{aid}", {**taken, "port": "2", "mac": "dc:a6:32:zz:00:01"},
                   page="/admin/nodes")
        assert r.status_code == 400
        assert ("mac: &#39;dc:a6:32:zz:00:01&#39; is not a MAC address: write six pairs of hexadecimal "
                "digits separated by colons, like dc:a6:32:01:02:03") in r.text
        assert "pattern" not in r.text.split("Node not added")[1].split("</div>")[0]
        # A serial that is not a Raspberry Pi's, in words; a name in use is said before its port.
        r = b.post(f"/admin/nodes/{aid}", {**taken, "port": "2", "serial": "xyz"}, page="/admin/nodes")
        assert r.status_code == 400
        assert ("serial: &#39;xyz&#39; is not a board serial: a Raspberry Pi&#39;s serial is 8 hexadecimal "
                "digits (the end of &#39;Serial&#39; in /proc/cpuinfo, like 9ffefdef), or all 16 of them"
                ) in r.text
        r = b.post(f"/admin/nodes/{aid}", {**taken, "name": first["name"]}, page="/admin/nodes")
        assert r.status_code == 400 and f"rpi-lab: node {first['name']} already exists" in r.text, r.text
        assert "already powers" not in r.text
        assert [n["name"] for n in rpi.api("GET", "/api/admin/nodes").json()] == [first["name"]]


def test_environments_page_sets_the_default(config: Path, rpi: RaspberryAgent) -> None:  # noqa: F811
    with webui_client(config) as b:
        connect(b, ("rpi-lab", rpi.port))
        page = b.get("/admin/environments").text
        aid = int(re.search(r'action="/admin/environments/(\d+)/scan"', page).group(1))  # type: ignore[union-attr]
        page = follow(b, b.post(f"/admin/environments/{aid}/scan", page="/admin/environments"))
        row = page.split('data-env="tiny-a"')[1].split("</tr>")[0]
        assert "Make default" in row and ">default<" not in row
        page = follow(b, b.post(f"/admin/environments/{aid}/default/tiny-a", {"default": "on"},
                                page="/admin/environments"))
        assert ("ok", "tiny-a is now the default environment of rpi-lab.") in flashes(page)
        envs = {e["name"]: e for e in rpi.api("GET", "/api/admin/environments").json()}
        assert envs["tiny-a"]["default"] and not envs["tiny-b"]["default"]
        row = page.split('data-env="tiny-a"')[1].split("</tr>")[0]
        assert ">default<" in row and "Unset default" in row
        # A private environment cannot be everyone's default: the agent's reason is shown.
        body = {**envs["tiny-b"], "owner": "alice@example.org"}
        keys = ("name", "image", "size", "sector_start", "ssh_user", "checksum", "owner")
        body = {k: body[k] for k in keys}
        assert rpi.api("PUT", "/api/admin/environments/tiny-b", json=body).status_code == 200
        page = follow(b, b.post(f"/admin/environments/{aid}/default/tiny-b", {"default": "on"},
                                page="/admin/environments"))
        refused = ("Default of rpi-lab not changed: rpi-lab: environment tiny-b is private to "
                   "alice@example.org: only a public environment can be everyone's default")
        assert ("error", refused) in flashes(page)
        page = follow(b, b.post(f"/admin/environments/{aid}/default/tiny-a", {"default": "off"},
                                page="/admin/environments"))
        assert any(k == "ok" and m.startswith("tiny-a is no longer the default") for k, m in flashes(page))
        assert not rpi.api("GET", "/api/admin/environments/tiny-a").json()["default"]
