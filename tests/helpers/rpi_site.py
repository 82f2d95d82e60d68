"""A raspberry agent (API over ASGI, executor) on the simulated cluster, shared by the end-to-end
tests: register the switch and boards as an admin, reserve, deploy, wait, log in.

Everything shares one event loop (the simulator, the API, the executor): every wait here is
asynchronous.
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

from helpers.agent_helpers import ADMIN
from helpers.constants import OS_PASSWORD
from helpers.raspberry_helpers import USER, agent_config, sessions_for, user_key
from helpers.rpi_fixtures import known_hosts_name, running_cluster
from piseduce.agent.app import create_app
from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
from piseduce.agent.engine.executor import Executor
from piseduce.config import AgentConfig
from piseduce.sim.rpi.cluster import RpiCluster

SIM_TIME_SCALE = 100.0  # a 20 s boot takes 0.2 s
TIMEOUT_SCALE = 0.02  # wait_nfs: hard reboot after 3 s, failure 6 s later
PASSWORD = OS_PASSWORD


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
    boot_delay = faults.pop("boot_delay", 20.0)
    boards = faults.pop("boards", 2)
    async with running_cluster(
        tmp_path, boards=boards, time_scale=SIM_TIME_SCALE, boot_delay=boot_delay, seed=1, **faults
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
    known.write_text(f"{known_hosts_name(conn['host'], conn['port'])} {conn['host_key']}\n")
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
