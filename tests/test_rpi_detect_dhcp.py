"""Node detection on a DHCP board network (the simulated cluster in real mode, its boards asking
the real dnsmasq the simulator runs with the file `piseduce agent network-config` wrote): an
unknown board gets a lease of the dynamic range, detection finds it in dnsmasq's lease file, reads
the board, registers it with a free static address and rewrites the dnsmasq file; at its next
power-on the board has its static address, where OpenSSH reaches it with the recorded host key."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN, piseduce_cmd, subprocess_env
from helpers.raspberry_helpers import agent_config
from helpers.rpi_fixtures import power, require_real_mode, running_cluster
from helpers.rpi_site import _ok
from piseduce.agent.app import create_app
from piseduce.sim.rpi.cluster import RpiCluster

pytestmark = pytest.mark.slow


def require_dhcp() -> None:
    require_real_mode()
    for tool in ("dnsmasq", "udhcpc", "ssh"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed (./run setup installs it)")


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (got := check()):
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.1)
    return got


@dataclass
class Lab:
    cluster: RpiCluster
    client: httpx.AsyncClient
    net: ipaddress.IPv4Network
    conf: Path
    agent_key: Path


@contextlib.asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    require_dhcp()
    conf = tmp_path / "dnsmasq-boards.conf"
    async with running_cluster(tmp_path, boards=4, time_scale=100.0, boot_delay=20.0, seed=3,
                               dhcp_config=conf) as (cluster, agent_key):
        assert cluster.mode == "real"
        inv = cluster.inventory()
        net = ipaddress.IPv4Network(inv["network"])
        first = net.network_address
        config = agent_config(
            tmp_path, tftp_root=str(cluster.opts.tftp_root), nfs_root=str(cluster.opts.nfs_root),
            ssh_key_file=str(agent_key), board_address=f"{inv['uplink']['ip']}/{net.prefixlen}",
            board_interface=inv["uplink"]["host_if"], dhcp_range=f"{first + 100}-{first + 120}",
            dhcp_leases_file=str(cluster.opts.state_dir / "dhcp" / "dnsmasq.leases"),
            dnsmasq_config_file=str(conf),
        )
        # The operator's first step: the file, from the (empty) node table, then dnsmasq with it.
        cmd = piseduce_cmd("agent", "network-config", str(config.path), "--output", str(conf))
        done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert "dhcp-host=" not in conf.read_text()
        await wait_for(lambda: cluster.dhcp_served >= 1, 20, "dnsmasq started with the file")
        app = create_app(config)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent",
                                     timeout=30) as client:
            try:
                await _ok(await client.post("/api/admin/switches", json=inv["switch"], headers=ADMIN), 201)
                yield Lab(cluster, client, net, conf, agent_key)
            finally:
                await app.state.agent.driver.close()


async def detect(site: Lab, ports: list[int]) -> dict[str, Any]:
    body = {"switch": site.cluster.opts.switch_name, "ports": ports, "pattern": "pi-{port}"}
    job = await _ok(await site.client.post("/api/admin/detect", json=body, headers=ADMIN), 202)
    deadline = asyncio.get_running_loop().time() + 90
    while not job["done"]:
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.1)
        job = await _ok(await site.client.get(f"/api/admin/detect/{job['id']}", headers=ADMIN))
    return dict(job)


def lease_of(cluster: RpiCluster, mac: str) -> tuple[str, str] | None:
    """The board's line of dnsmasq's lease file: (address, expiry)."""
    path = cluster.opts.state_dir / "dhcp" / "dnsmasq.leases"
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == mac:
            return fields[2], fields[0]
    return None


def leased(cluster: RpiCluster, mac: str) -> str | None:
    got = lease_of(cluster, mac)
    return got[0] if got else None


def openssh(site: Lab, tmp_path: Path, ip: str, host_key: str, command: str) -> str:
    """OpenSSH to root@ip, the host key pinned to the one detection recorded."""
    known = tmp_path / "known_hosts"
    known.write_text(f"{ip} {' '.join(host_key.split()[:2])}\n")
    done = subprocess.run(
        ["ssh", "-i", str(site.agent_key), "-o", f"UserKnownHostsFile={known}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         "-F", "/dev/null", f"root@{ip}", command],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_detection_on_dhcp_then_the_static_address_at_the_next_power_on(tmp_path: Path) -> None:
    async with lab(tmp_path) as site:
        cluster, net = site.cluster, site.net
        cluster.set_cable(3, False)  # nothing plugged in port 3
        cluster.board("pi-4").never_boot = True  # draws power, never asks for a lease
        served = cluster.dhcp_served
        job = await detect(site, [1, 2, 3, 4])
        by_port = {p["port"]: p for p in job["ports"]}
        assert [by_port[p]["step"] for p in (1, 2)] == ["registered", "registered"], job
        assert by_port[3]["step"] == "failed" and "nothing plugged" in by_port[3]["reason"], job
        assert by_port[4]["step"] == "failed" and "no boot" in by_port[4]["reason"], job
        assert "DHCP lease" in by_port[4]["reason"]
        nodes = {n["name"]: n for n in await _ok(await site.client.get("/api/admin/nodes", headers=ADMIN))}
        assert set(nodes) == {"pi-1", "pi-2"}
        first, last = net.network_address + 100, net.network_address + 120
        text = site.conf.read_text()
        for port in (1, 2):
            board, node = cluster.board(f"pi-{port}"), nodes[f"pi-{port}"]
            assert node["attrs"]["mac"] == board.identity.mac
            assert node["attrs"]["serial"] == board.identity.serial
            # detection reached it at its lease of the dynamic range...
            assert first <= ipaddress.IPv4Address(board.address[0]) <= last, board.address
            # ... and registered it with a static address outside it, now in the dnsmasq file
            static = ipaddress.IPv4Address(node["ip"])
            assert static in net and not first <= static <= last, static
            assert f"dhcp-host={board.identity.mac},{static},pi-{port}" in text, text
        assert nodes["pi-1"]["ip"] != nodes["pi-2"]["ip"]
        await wait_for(lambda: cluster.dhcp_served > served, 20, "dnsmasq restarted with the new file")
        # The next power-on: the board asks again and gets its static address; SSH reaches it there.
        await power(cluster.inventory(), 1, on=True)
        board = cluster.board("pi-1")
        await wait_for(lambda: board.system == "nfs", 30, "pi-1 booted again")
        assert board.address[0] == nodes["pi-1"]["ip"]
        assert leased(cluster, board.identity.mac) == nodes["pi-1"]["ip"]
        out = openssh(site, tmp_path, nodes["pi-1"]["ip"], nodes["pi-1"]["attrs"]["host_key"],
                      "ip -o link show dev eth0; ip -4 -o addr show dev eth0")
        assert board.identity.mac in out and f" {nodes['pi-1']['ip']}/{net.prefixlen} " in out, out
        # Re-detecting the known board keeps its static address and creates no duplicate.
        await power(cluster.inventory(), 1, on=False)
        again = await detect(site, [1])
        port1 = again["ports"][0]
        assert port1["step"] == "registered" and port1["updated"] is True, (port1.get("reason"), port1)
        after = {n["name"]: n for n in await _ok(await site.client.get("/api/admin/nodes", headers=ADMIN))}
        assert set(after) == {"pi-1", "pi-2"} and after["pi-1"]["ip"] == nodes["pi-1"]["ip"]


async def test_re_detection_of_a_known_board_within_the_second_of_its_last_lease(tmp_path: Path) -> None:
    """dnsmasq writes a lease's expiry in whole seconds and leaves its lease file as it was when
    nothing changed: a known board powered off just after it had its lease, and re-detected at
    once, asks again within that second. Detection must still see it ask, and register it."""
    async with lab(tmp_path) as site:
        cluster = site.cluster
        served = cluster.dhcp_served
        first = (await detect(site, [1]))["ports"][0]
        assert first["step"] == "registered", (first["reason"], first)
        await wait_for(lambda: cluster.dhcp_served > served, 20, "dnsmasq restarted with the new file")
        mac = cluster.board("pi-1").identity.mac
        leases = cluster.opts.state_dir / "dhcp" / "dnsmasq.leases"
        within, lag = 0, 0.5
        for _ in range(12):  # a loaded host may be slower than a second now and then
            before = lease_of(cluster, mac)
            # powered on so that its lease comes at the start of a second (lag: power-on to lease,
            # as last seen), leaving the rest of that second to the re-detection
            await asyncio.sleep((0.02 - time.time() - lag) % 1.0)
            on = time.time()
            await power(cluster.inventory(), 1, on=True)
            await wait_for(lambda: lease_of(cluster, mac) not in (None, before), 30,  # noqa: B023
                           "pi-1 asked for its lease")
            lag = time.time() - on
            granted = int(leases.stat().st_mtime)
            await power(cluster.inventory(), 1, on=False)
            started = time.time()
            port = (await detect(site, [1]))["ports"][0]
            assert port["step"] == "registered" and port["updated"] is True, (port["reason"], port)
            assert port["ip"] == first["ip"], port
            within += int(started) == granted
            if within >= 2:
                break
        if not within:
            # Every re-detection above still had to register the board; only the same-second
            # case this test is for was never timed right (a very loaded host): say so.
            pytest.skip("no re-detection started within the second of the board's last lease")
