"""The demo registers the simulator's switch and boards on its raspberry agent at every start, also on
a data folder from an earlier run: against a real agent process, twice and more, it brings what
exists in line with the simulator (a board's SSH port moved) and leaves the administrator's status
alone. (The whole demo started twice on one folder: test_demo_restart.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from helpers.agent_helpers import ADMIN, free_port, wait_http
from helpers.constants import TOKEN
from helpers.raspberry_helpers import agent_config
from piseduce.demo import configure
from piseduce.demo.supervisor import DemoError


@pytest.fixture
def rpi_agent(tmp_path: Path) -> Iterator[str]:
    """`piseduce agent api` of a raspberry agent (its real driver and admin routes)."""
    port = free_port()
    config = agent_config(tmp_path, port_number=port, host="127.0.0.1", name="rpi-lab")
    proc = subprocess.Popen([sys.executable, "-m", "piseduce.cli", "agent", "api", str(config.path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/api/health", timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def inventory(ssh_ports: tuple[int, int]) -> dict[str, Any]:
    """What `piseduce sim rpi` writes in its inventory file (the fields the demo reads)."""
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    switch = {"name": "sw1", "ip": "127.0.0.1", "snmp_port": 16161, "community": "private",
              "poe_oid": "1.3.6.1.2.1.105.1.1.1.3.1", "oid_offset": 0, "port_count": 3, "master_port": 3,
              "power_oid": "", "power_oid_offset": 0, "snmp_version": "v2c"}
    boards = [{"name": f"pi-{i}", "ip": "127.0.0.1", "switch": "sw1", "port": i, "ssh_port": ssh_ports[i - 1],
               "model": "RPI4B", "serial": f"abcdef0{i}", "mac": f"dc:a6:32:00:00:0{i}", "nfs_host_key": key}
              for i in (1, 2)]
    return {"switch": switch, "boards": boards}


def nodes(url: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(url + "/api/admin/nodes", headers=ADMIN, timeout=10)
    r.raise_for_status()
    return {n["name"]: n for n in r.json()}


def test_registering_the_boards_again_brings_them_in_line(rpi_agent: str) -> None:
    inv = inventory((2201, 2202))
    assert configure.register_raspberry(rpi_agent, TOKEN, inv) == 2
    # The next start of the demo, nothing changed: accepted, nothing changes.
    assert configure.register_raspberry(rpi_agent, TOKEN, inv) == 2
    first = nodes(rpi_agent)
    assert {n: v["attrs"]["ssh_port"] for n, v in first.items()} == {"pi-1": 2201, "pi-2": 2202}

    # The administrator put pi-1 in maintenance; at the next start its SSH port moved.
    r = httpx.patch(rpi_agent + "/api/admin/nodes/pi-1", json={"status": "maintenance"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert configure.register_raspberry(rpi_agent, TOKEN, inventory((2301, 2202))) == 2
    again = nodes(rpi_agent)
    assert again["pi-1"]["attrs"]["ssh_port"] == 2301 and again["pi-2"]["attrs"]["ssh_port"] == 2202
    assert again["pi-1"]["status"] == "maintenance" and again["pi-2"]["status"] == "available"
    assert again["pi-1"]["attrs"]["serial"] == "abcdef01"
    assert again["pi-1"]["properties"] == {"model": "RPI4B"}


def test_a_change_is_checked_as_an_addition_is(rpi_agent: str) -> None:
    configure.register_raspberry(rpi_agent, TOKEN, inventory((2201, 2202)))
    url = rpi_agent + "/api/admin/nodes/pi-2"
    # pi-1's port, the uplink, a port the switch lacks: refused in words, nothing changes.
    for port, status, words in ((1, 409, "already powers pi-1"), (3, 409, "master (uplink) port"),
                                (9, 422, "has ports 1 to 3")):
        r = httpx.patch(url, json={"port": port}, headers=ADMIN)
        assert r.status_code == status and words in r.json()["detail"], r.text
    for bad in ({"name": "pi-9"}, {"mac": "nope"}, {"ssh_port": 0}, {"serial": "a-b"}):
        assert httpx.patch(url, json=bad, headers=ADMIN).status_code == 422, bad
    r = httpx.patch(url, json={"serial": "abcdef01"}, headers=ADMIN)  # pi-1's
    assert r.status_code == 409 and "pi-1's already" in r.json()["detail"], r.text
    assert nodes(rpi_agent)["pi-2"]["attrs"]["port"] == 2
    assert nodes(rpi_agent)["pi-2"]["attrs"]["serial"] == "abcdef02"
    r = httpx.patch(rpi_agent + "/api/admin/nodes/pi-7", json={"ssh_port": 22}, headers=ADMIN)
    assert r.status_code == 404
    # The demo says what the agent refused in one line, not a traceback.
    inv = inventory((2201, 2202))
    inv["boards"][1]["port"] = 1
    with pytest.raises(DemoError, match=r"refused the board pi-2 \(409\): port 1 of switch sw1 "):
        configure.register_raspberry(rpi_agent, TOKEN, inv)
