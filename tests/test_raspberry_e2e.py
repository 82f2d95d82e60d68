"""End to end: the raspberry driver through the real API and engine against the simulated cluster
(PoE switch over SNMP, boards over SSH running the real `piseduce-node`), then real logins.

Everything shares one event loop (the simulator, the API over ASGI, the executor), so every wait
here is asynchronous: a blocking call would freeze the boards too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry import RaspberryDriver
from piseduce.agent.engine import Executor
from piseduce.config import AgentConfig
from piseduce.sim.images import build_environment
from piseduce.sim.rpi.cluster import RpiCluster
from raspberry_helpers import ADMIN, USER, agent_config, sessions_for, user_key
from rpi_fixtures import running_cluster

pytestmark = pytest.mark.slow

SIM_TIME_SCALE = 100.0  # a 20 s boot takes 0.2 s
TIMEOUT_SCALE = 0.02  # wait_nfs: hard reboot after 3 s, failure 6 s later
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("images")
    return folder, build_environment(folder, "raspios", size_mb=56, compress="gz")


@dataclass
class Site:
    config: AgentConfig
    cluster: RpiCluster
    client: httpx.AsyncClient
    env: dict[str, Any]
    key: Path
    pub: str
    tmp: Path

    @property
    def inventory(self) -> dict[str, Any]:
        return self.cluster.inventory()

    def board(self, name: str) -> dict[str, Any]:
        return next(b for b in self.inventory["boards"] if b["name"] == name)


async def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


@contextlib.asynccontextmanager
async def make_site(
    tmp_path: Path, image_dir: tuple[Path, dict[str, Any]], **faults: Any
) -> AsyncIterator[Site]:
    async with running_cluster(
        tmp_path, boards=2, time_scale=SIM_TIME_SCALE, boot_delay=20.0, seed=1, **faults
    ) as (cluster, agent_key):
        # The agent uses the key the simulated pimaster authorised on its NFS root.
        config = agent_config(
            tmp_path,
            timeout_scale=TIMEOUT_SCALE,
            poll_interval=0.05,
            lease_seconds=30,
            tftp_root=str(cluster.opts.tftp_root),
            nfs_root=str(cluster.opts.nfs_root),
            ssh_key_file=str(agent_key),
        )
        sessions = sessions_for(config)
        driver = RaspberryDriver(config, sessions)
        app = create_app(config)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://agent", timeout=30
        )
        folder, env = image_dir
        shutil.copy(folder / env["image"], config.env_dir / env["image"])
        key, pub = user_key(tmp_path)
        stop = asyncio.Event()
        task = asyncio.create_task(Executor(config, sessions, driver).run_forever(stop))
        try:
            inv = cluster.inventory()
            await _ok(await client.post("/api/admin/switches", json=inv["switch"], headers=ADMIN), 201)
            for b in inv["boards"]:
                body = {
                    k: b[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")
                }
                body["host_key"] = b["nfs_host_key"]
                await _ok(await client.post("/api/admin/nodes", json=body, headers=ADMIN), 201)
            # Registered by the sidecar scan, as an operator would after copying images to env_path.
            (config.env_dir / f"{env['image']}.json").write_text(json.dumps(env))
            scan = await _ok(await client.post("/api/admin/environments/scan", headers=ADMIN))
            assert scan["added"] == [env["name"]], scan
            yield Site(config, cluster, client, env, key, pub, tmp_path)
        finally:
            stop.set()
            await task
            await client.aclose()
            await driver.close()
            await app.state.agent.driver.close()


@pytest.fixture
async def site(tmp_path: Path, image_dir: tuple[Path, dict[str, Any]]) -> AsyncIterator[Site]:
    async with make_site(tmp_path, image_dir) as s:
        yield s


async def reserve(site: Site, nodes: list[str]) -> list[int]:
    body = {"filters": [{"nodes": nodes}], "start": "now", "duration_hours": 1}
    out = await _ok(await site.client.post("/api/reservations", json=body, headers=USER), 201)
    return [r["id"] for r in out["reservations"]]


async def deploy(site: Site, rid: int, **extra: Any) -> None:
    body = {
        "environment": site.env["name"],
        "part_size": "whole",
        "ssh_keys": [site.pub],
        "os_password": PASSWORD,
    }
    body.update(extra)
    await _ok(await site.client.post(f"/api/reservations/{rid}/deploy", json=body, headers=USER), 202)


async def wait_for(
    site: Site, rid: int, statuses: tuple[str, ...], timeout: float = 90.0, events: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Wait until the reservation is in one of `statuses`, or has an event among `events`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await _ok(await site.client.get(f"/api/reservations/{rid}", headers=USER))
        if r["status"] in statuses or any(e["message"] in events for e in r["events"]):
            return dict(r)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"reservation {rid} still {r['status']} at step {r['step']}: {r['events'][-5:]}"
            )
        await asyncio.sleep(0.1)


async def openssh_login(site: Site, res: dict[str, Any]) -> str:
    conn = res["connection"]
    known = site.tmp / f"known_hosts_{res['node']}"
    known.write_text(f"[{conn['host']}]:{conn['port']} {conn['host_key']}\n")
    proc = await asyncio.create_subprocess_exec(
        "ssh",
        "-i",
        str(site.key),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-F",
        "/dev/null",
        "-p",
        str(conn["port"]),
        f"{conn['user']}@{conn['host']}",
        "hostname",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def password_login(res: dict[str, Any], password: str) -> str:
    conn = res["connection"]
    async with asyncssh.connect(
        conn["host"],
        conn["port"],
        username=conn["user"],
        password=password,
        client_keys=None,
        known_hosts=([asyncssh.import_public_key(conn["host_key"])], [], []),
        agent_path=None,
        config=None,
        preferred_auth="password",
    ) as c:
        result = await c.run("hostname", check=True)
    return str(result.stdout).strip()


def card_has_partition_table(site: Site, name: str) -> bool:
    with site.cluster.board(name).card_path.open("rb") as fh:
        mbr = fh.read(512)
    return mbr[510:512] == b"\x55\xaa" and any(mbr[446:510])


async def test_deploy_two_boards_login_and_destroy(site: Site) -> None:
    ids = await reserve(site, ["pi-1", "pi-2"])
    form = await _ok(await site.client.get(f"/api/reservations/{ids[0]}/form", headers=USER))
    assert [f["name"] for f in form] == ["environment", "part_size", "os_password", "ssh_keys"]
    for rid in ids:
        await deploy(site, rid)
    done = [await wait_for(site, rid, ("deployed", "failed")) for rid in ids]
    for res in done:
        assert res["status"] == "deployed", (res["error"], res["events"][-6:])
        name = res["node"]
        conn = res["connection"]
        assert conn["user"] == "pi" and conn["password_set"] is True
        assert conn["ssh"] == f"ssh -p {site.board(name)['ssh_port']} pi@127.0.0.1"
        assert conn["host_key"].split()[:2] == site.board(name)["host_key"].split()[:2]
        assert res["params"]["os_password"] == PASSWORD  # shown to its owner
        messages = " | ".join(e["message"] for e in res["events"])
        assert "image verified" in messages and "pinned the host key of the deployed system" in messages
        assert site.cluster.board(name).system == "deployed"
        # A real OpenSSH client, with the user's key and the pinned host key only.
        assert await openssh_login(site, res) == name
        assert await password_login(res, PASSWORD) == name
        with pytest.raises(asyncssh.PermissionDenied):
            await password_login(res, "not the password")

    # The netboot host key was given at registration: nothing was trusted on first use.
    nodes = await _ok(await site.client.get("/api/admin/nodes", headers=ADMIN))
    assert all("nfs_host_key" not in n["attrs"] for n in nodes)

    # Reboot keeps the pinned key and comes back deployed.
    await _ok(await site.client.post(f"/api/reservations/{ids[0]}/reboot", headers=USER), 202)
    again = await wait_for(site, ids[0], ("failed",), events=("reboot finished",))
    assert again["status"] == "deployed", again["error"]
    assert await openssh_login(site, again) == again["node"]
    # Redeploy: the card is written again; the new system's host key is pinned again.
    await _ok(await site.client.post(f"/api/reservations/{ids[0]}/redeploy", headers=USER), 202)
    again = await wait_for(site, ids[0], ("failed",), events=("redeploy finished",))
    assert again["status"] == "deployed", again["error"]
    assert sum("pinned the host key of the deployed system" in e["message"] for e in again["events"]) == 2
    assert await password_login(again, PASSWORD) == again["node"]
    # Boot files exported again from the card (through the netboot system), then back to the system.
    await _ok(await site.client.post(f"/api/reservations/{ids[1]}/bootfiles", headers=USER), 202)
    again = await wait_for(site, ids[1], ("failed",), events=("bootfiles finished",))
    assert again["status"] == "deployed", again["error"]
    assert await openssh_login(site, again) == again["node"]

    for rid in ids:
        await _ok(await site.client.post(f"/api/reservations/{rid}/destroy", headers=USER), 202)
    for rid, res in zip(ids, done, strict=True):
        end = await wait_for(site, rid, ("ended", "failed"))
        assert end["status"] == "ended" and not end["error"], end["events"][-6:]
        assert end["connection"] == {}
        name = res["node"]
        assert not card_has_partition_table(site, name)
        assert not (site.config.tftp_dir / site.board(name)["serial"]).exists()
        assert not site.cluster.board(name).powered
    listing = await _ok(await site.client.get("/api/nodes", headers=USER))
    assert {n["name"]: n["status"] for n in listing} == {"pi-1": "available", "pi-2": "available"}
    # The nodes are free again: a new booking of both succeeds.
    assert len(await reserve(site, ["pi-1", "pi-2"])) == 2


async def test_failed_boot_is_hard_rebooted_and_a_dead_board_fails_alone(site: Site) -> None:
    site.cluster.board("pi-1").fail_next_boots = 1
    site.cluster.board("pi-2").never_boot = True
    ids = await reserve(site, ["pi-1", "pi-2"])
    for rid in ids:
        await deploy(site, rid, os_password="")
    res1 = await wait_for(site, ids[0], ("deployed", "failed"))
    res2 = await wait_for(site, ids[1], ("deployed", "failed"))
    assert res1["status"] == "deployed", (res1["error"], res1["events"][-6:])
    assert any("automatic hard reboot" in e["message"] for e in res1["events"])
    # An empty password was replaced by a generated one, and it works.
    generated = res1["params"]["os_password"]
    assert len(generated) >= 16
    assert await password_login(res1, generated) == "pi-1"

    assert res2["status"] == "failed"
    assert "netboot system" in res2["error"] and "even after an automatic hard reboot" in res2["error"]
    assert any("automatic hard reboot" in e["message"] for e in res2["events"])


async def test_changed_netboot_host_key_stops_the_deployment(site: Site) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    # An administrator registered pi-1 with a wrong key (or pi-1 was replaced by an impostor).
    await _ok(await site.client.delete("/api/admin/nodes/pi-1", headers=ADMIN))
    b = site.board("pi-1")
    body = {k: b[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")}
    body["host_key"] = other
    await _ok(await site.client.post("/api/admin/nodes", json=body, headers=ADMIN), 201)
    (rid,) = await reserve(site, ["pi-1"])
    await deploy(site, rid)
    res = await wait_for(site, rid, ("deployed", "failed"))
    assert res["status"] == "failed"
    assert "host key" in res["error"] and "changed" in res["error"]
    assert card_has_partition_table(site, "pi-1") is False  # nothing was written


async def test_dropped_ssh_connections_and_lost_snmp_packets_are_retried(
    tmp_path: Path, image_dir: tuple[Path, dict[str, Any]]
) -> None:
    # One SSH command in ten is cut at a random moment, one SNMP packet in ten is lost.
    async with make_site(tmp_path, image_dir, ssh_drop_rate=0.1, snmp_loss=0.1) as site:
        ids = await reserve(site, ["pi-1", "pi-2"])
        for rid in ids:
            await deploy(site, rid)
        for rid in ids:
            res = await wait_for(site, rid, ("deployed", "failed"))
            assert res["status"] == "deployed", (res["error"], res["events"][-6:])
            # (no login here: the simulator would cut it one time in ten too)
            assert site.cluster.board(res["node"]).system == "deployed" and res["connection"]["host_key"]
