"""Node detection on the simulated cluster in real mode (namespaces, OpenSSH servers on the
boards' network, the real `piseduce-node`), through the agent API over ASGI: the agent powers the
ports over SNMP, the boards nobody registered boot the netboot template, `piseduce-node info`
says who they are, the nodes are registered. Nothing of the simulator's identities is given to
the agent: they are only compared with what it found."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import USER, agent_config
from helpers.rpi_fixtures import require_real_mode, running_cluster
from helpers.rpi_site import _ok
from piseduce.agent.app import create_app
from piseduce.node.board import memory_gb_from_revision
from piseduce.sim.rpi.board import MODELS
from piseduce.sim.rpi.cluster import RpiCluster

pytestmark = pytest.mark.slow


@dataclass
class Lab:
    cluster: RpiCluster
    client: httpx.AsyncClient

    def board(self, port: int) -> dict[str, Any]:
        return next(b for b in self.cluster.inventory()["boards"] if b["port"] == port)


@contextlib.asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    require_real_mode()
    async with running_cluster(tmp_path, boards=4, time_scale=100.0, boot_delay=20.0, seed=3) as (
        cluster, agent_key,
    ):
        assert cluster.mode == "real"
        inv = cluster.inventory()
        net = ipaddress.ip_network(inv["network"])
        config = agent_config(
            tmp_path, tftp_root=str(cluster.opts.tftp_root), nfs_root=str(cluster.opts.nfs_root),
            ssh_key_file=str(agent_key), board_address=f"{inv['uplink']['ip']}/{net.prefixlen}",
        )
        app = create_app(config)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent",
                                     timeout=30) as client:
            try:
                await _ok(await client.post("/api/admin/switches", json=inv["switch"], headers=ADMIN), 201)
                yield Lab(cluster, client)
            finally:
                await app.state.agent.driver.close()


async def detect(site: Lab, ports: list[int], pattern: str = "pi-{port}") -> dict[str, Any]:
    body = {"switch": site.cluster.opts.switch_name, "ports": ports, "pattern": pattern}
    job = await _ok(await site.client.post("/api/admin/detect", json=body, headers=ADMIN), 202)
    assert [p["step"] for p in job["ports"]] == ["waiting"] * len(ports)
    deadline = asyncio.get_running_loop().time() + 60
    seen: set[str] = set()
    while not job["done"]:
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.1)
        job = await _ok(await site.client.get(f"/api/admin/detect/{job['id']}", headers=ADMIN))
        seen |= {p["step"] for p in job["ports"]}
    job["seen"] = sorted(seen)
    return dict(job)


async def nodes(site: Lab) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in await _ok(await site.client.get("/api/admin/nodes", headers=ADMIN))}


async def test_four_ports_at_once_one_empty_one_that_never_boots(tmp_path: Path) -> None:
    async with lab(tmp_path) as site:
        site.cluster.set_cable(3, False)  # nothing plugged in port 3
        site.cluster.board("pi-4").never_boot = True
        started = asyncio.get_running_loop().time()
        job = await detect(site, [1, 2, 3, 4])
        took = asyncio.get_running_loop().time() - started
        by_port = {p["port"]: p for p in job["ports"]}
        assert "booting" in job["seen"], job["seen"]  # the page follows the ports' steps
        assert [by_port[p]["step"] for p in (1, 2)] == ["registered", "registered"], job
        assert by_port[3]["step"] == "failed" and "nothing plugged" in by_port[3]["reason"]
        assert by_port[4]["step"] == "failed" and "no boot" in by_port[4]["reason"]
        registered = await nodes(site)
        assert set(registered) == {"pi-1", "pi-2"}
        for port in (1, 2):
            truth, node = site.board(port), registered[f"pi-{port}"]
            assert node["attrs"]["serial"] == truth["serial"]
            assert node["attrs"]["mac"] == truth["mac"]
            assert node["properties"]["model"] == truth["model"]
            # the Reserve filters' memory, as registered nodes have it (from the board's revision)
            assert node["properties"]["memory_gb"] == memory_gb_from_revision(MODELS[truth["model"]][0])
            assert node["attrs"]["port"] == port and node["ip"] == truth["ip"]
            # the netboot system's key, recorded on first contact, is the one it serves
            assert node["attrs"]["host_key"].split()[:2] == truth["nfs_host_key"].split()[:2]
            assert by_port[port]["card_size"] > 0
        # every port is off again
        assert not any(site.cluster.board(f"pi-{p}").powered for p in (1, 2, 3, 4))
        print(f"4 ports detected in {took:.1f} s")  # concurrently: about one port's time


async def test_redetection_updates_the_row_without_a_duplicate(tmp_path: Path) -> None:
    async with lab(tmp_path) as site:
        first = await detect(site, [1])
        assert first["ports"][0]["step"] == "registered" and first["ports"][0]["updated"] is False
        # an administrator moved the board's row to maintenance and typed a wrong MAC
        memory = first_node = (await nodes(site))["pi-1"]["properties"]["memory_gb"]
        assert memory > 0, first_node
        patch = {"mac": "02:00:00:00:00:01", "status": "maintenance",
                 "properties": {"rack": "A3", "memory_gb": 1}}
        await _ok(await site.client.patch("/api/admin/nodes/pi-1", json=patch, headers=ADMIN))
        again = await detect(site, [1], pattern="board-{port}")
        assert again["ports"][0]["step"] == "registered", again
        assert again["ports"][0]["updated"] is True and again["ports"][0]["name"] == "pi-1"
        registered = await nodes(site)
        assert list(registered) == ["pi-1"]
        assert registered["pi-1"]["attrs"]["mac"] == site.board(1)["mac"]
        # what it learns is updated, what it does not learn is kept
        assert registered["pi-1"]["properties"]["memory_gb"] == memory
        assert registered["pi-1"]["properties"]["rack"] == "A3"


BAD = [
    ({"switch": "nope", "ports": [1]}, 404, "unknown switch"),
    ({"ports": [0]}, 422, "has ports 1 to"),
    ({"ports": [99]}, 422, "has ports 1 to"),
    ({"ports": [5]}, 422, "uplink"),
    ({"ports": [1, 1]}, 422, "twice"),
    ({"ports": []}, 422, "ports"),
    ({"ports": ["8"]}, 422, "integer"),  # the schema says integer: text is refused, not read
    ({"ports": [1.0]}, 422, "integer"),
    ({"ports": [True]}, 422, "integer"),
    ({"ports": [1], "pattern": "pi"}, 422, "{port}"),
    ({"ports": [1], "pattern": "pi {port}"}, 422, "{port}"),
    ({"ports": [1], "pattern": "-{port}"}, 422, "pattern"),
    ({"ports": [1], "pattern": "{port}{port}"}, 422, "pattern"),
    ({"ports": [1], "pattern": "pi-{port}"}, 409, "another node"),  # pi-1 is the node on port 2
]


async def test_bad_input_is_a_4xx_and_changes_nothing(tmp_path: Path) -> None:
    async with lab(tmp_path) as site:
        # a node typed by hand on port 2, with the name pi-{port} would give port 1
        hand = {"name": "pi-1", "ip": "10.9.9.9", "switch": site.cluster.opts.switch_name, "port": 2}
        await _ok(await site.client.post("/api/admin/nodes", json=hand, headers=ADMIN), 201)
        before = await nodes(site)
        for body, status, words in BAD:
            full = {"switch": site.cluster.opts.switch_name, "pattern": "pi-{port}", **body}
            r = await site.client.post("/api/admin/detect", json=full, headers=ADMIN)
            assert r.status_code == status, (body, r.text)
            assert words in str(r.json()["detail"]), (body, r.text)
        assert await nodes(site) == before
        assert not any(b.powered for b in site.cluster.boards)
        assert await _ok(await site.client.get("/api/admin/detect", headers=ADMIN)) == []


async def test_a_port_whose_node_a_reservation_holds_is_never_powered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 16 testers: detection powered off a board a user had deployed, after logging into
    the user's system as root. A port whose node is held now is reported at once, never powered;
    the other ports of the same request are detected."""
    caplog.set_level(logging.INFO, logger="piseduce.agent.drivers.raspberry")
    async with lab(tmp_path) as site:
        first = await detect(site, [1, 2])
        assert [p["step"] for p in first["ports"]] == ["registered", "registered"], first
        body = {"filters": [{"nodes": ["pi-1"]}], "start": "now", "duration_hours": 1}
        booked = await _ok(await site.client.post("/api/reservations", json=body, headers=USER), 201)
        board = site.cluster.board("pi-1")
        boots = board.boots
        job = await _ok(await site.client.post("/api/admin/detect", headers=ADMIN, json={
            "switch": site.cluster.opts.switch_name, "ports": [1, 2], "pattern": "pi-{port}"}), 202)
        held = job["ports"][0]
        # reported at once in the 202 answer, like the other per-port failures
        assert held["step"] == "failed", job
        assert re.fullmatch(r"in use by a reservation until \d{4}-\d\d-\d\d \d\d:\d\d UTC: not detected",
                            held["reason"]), held
        while not job["done"]:
            await asyncio.sleep(0.1)
            job = await _ok(await site.client.get(f"/api/admin/detect/{job['id']}", headers=ADMIN))
        assert job["ports"][1]["step"] == "registered", job
        assert board.boots == boots and not board.powered  # never touched
        # the agent's log says who started it, which ports, each power change and result
        ours = [r.getMessage() for r in caplog.records if job["id"] in r.getMessage()]
        sw = site.cluster.opts.switch_name
        assert any(f"started by root@example.org: switch {sw}, ports 1,2" in m for m in ours), ours
        assert any(f"{sw} port 1: failed: in use by a reservation until" in m for m in ours), ours
        assert any(f"{sw} port 2 powered off" in m for m in ours), ours
        assert any(f"{sw} port 2: registered pi-2" in m for m in ours), ours
        since = caplog.messages[caplog.messages.index(ours[0]):]
        assert not any(f"{sw} port 1 powered" in m for m in since), since
        assert any(f"{sw} port 2 powered on" in m for m in since), since
        res = await _ok(await site.client.get(f"/api/reservations/{booked['reservations'][0]['id']}",
                                              headers=USER))
        assert res["status"] not in ("failed", "ended", "cancelled"), res


async def test_a_known_board_whose_folder_boots_its_card_is_detected_on_the_netboot_path(
    tmp_path: Path,
) -> None:
    """A registered board's TFTP folder may hold its card's boot files (a deployment left them):
    detection must make it boot the netboot template, never trust (or log into) another system."""
    async with lab(tmp_path) as site:
        first = await detect(site, [1])
        assert first["ports"][0]["step"] == "registered", first
        serial = site.board(1)["serial"]
        folder = site.cluster.opts.tftp_root / serial
        folder.mkdir(exist_ok=True)
        (folder / "cmdline.txt").write_text("console=serial0 root=/dev/mmcblk0p2 rootwait\n")
        again = await detect(site, [1])
        assert again["ports"][0]["step"] == "registered", again
        assert again["ports"][0]["updated"] is True
        assert "root=/dev/nfs" in (folder / "cmdline.txt").read_text()
