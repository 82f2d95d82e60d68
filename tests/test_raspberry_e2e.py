"""End to end: the raspberry driver through the real API and engine against the simulated cluster
(PoE switch over SNMP, boards over SSH running the real `piseduce-node`), then real logins.

Everything shares one event loop (the simulator, the API over ASGI, the executor), so every wait
here is asynchronous: a blocking call would freeze the boards too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from helpers.agent_helpers import ADMIN
from helpers.rpi_fixtures import power, served_host_key
from helpers.rpi_site import (
    PASSWORD,
    USER,
    Site,
    _ok,
    deploy,
    make_site,
    openssh_login,
    password_login,
    reserve,
    wait_for,
)
from piseduce.sim.images import build_environment

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("images")
    return folder, build_environment(folder, "raspios", size_mb=56, compress="gz")


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 2 GiB image, the size of a real Raspberry Pi OS Lite (zstd: quick to build)."""
    folder = tmp_path_factory.mktemp("big")
    return folder, build_environment(folder, "raspios", size_mb=2048, compress="zst")


@pytest.fixture
async def site(tmp_path: Path, image_dir: tuple[Path, dict[str, Any]]) -> AsyncIterator[Site]:
    async with make_site(tmp_path, image_dir) as s:
        yield s


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
        assert conn["ssh"] == f"ssh -p {site.board(name)['ssh_port']} pi@{site.board(name)['ip']}"
        # what the board serves: the key its first boot made on its card
        served = await served_host_key(conn["host"], int(conn["port"]))
        assert conn["host_key"].split()[:2] == served.split()
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


async def follow(site: Site, rid: int, timeout: float) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """Poll the reservation until deployed or failed: (last view, the (step, progress) seen)."""
    seen: list[tuple[str, int]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await _ok(await site.client.get(f"/api/reservations/{rid}", headers=USER))
        seen.append((r["step"], r["progress"]))
        if r["status"] in ("deployed", "failed"):
            return dict(r), seen
        assert asyncio.get_running_loop().time() < deadline, (r["step"], r["events"][-5:])
        await asyncio.sleep(0.25)


def moving(seen: list[tuple[str, int]], step: str) -> list[int]:
    values = [p for s, p in seen if s == step]
    assert values == sorted(values), (step, values)
    return sorted(set(values))


async def test_a_2_gib_image_at_real_card_speed_progresses_through_write_and_verify(
    tmp_path: Path, big_image: tuple[Path, dict[str, Any]]
) -> None:
    """The cards write at 20 and 40 MB/s and read at 44 MB/s, like real ones: the 2 GiB write
    takes close to a minute, the read-back as long, and both report their progress."""
    async with make_site(tmp_path, big_image, card_write_mbps=(20.0, 40.0), card_read_mbps=44.0) as site:
        assert site.cluster.board("pi-2").card_speed.write_mbps == 40.0
        (rid,) = await reserve(site, ["pi-2"])
        started = asyncio.get_running_loop().time()
        await deploy(site, rid)
        res, seen = await follow(site, rid, 600)
        took = asyncio.get_running_loop().time() - started
        assert res["status"] == "deployed", (res["error"], res["events"][-8:])
        size = site.env["size"]
        assert size >= 2 * 1024**3
        assert took >= size / 40e6 + size / 44e6, took  # the card's speed, not the host's
        # Progress seen moving all along both long steps (polled 4 times a second).
        assert len(moving(seen, "write_image")) >= 10, seen
        assert len(moving(seen, "verify")) >= 10, seen
        messages = [e["message"] for e in res["events"]]
        write = [m for m in messages if m.startswith(f"{site.env['name']}: write: ")]
        verify = [m for m in messages if m.startswith("read-back: verify: ")]
        assert len(write) >= 4 and len(verify) >= 4, messages
        assert "of 2.00 GiB" in write[-1] and "MB/s" in write[-1], write
        assert any(m.startswith("image verified") for m in messages)


async def test_a_power_loss_mid_write_is_recovered(
    tmp_path: Path, image_dir: tuple[Path, dict[str, Any]]
) -> None:
    """pi-2 loses power for 1 s mid-write (its port stays enabled); pi-1's port is cut through
    SNMP mid-write and stays off. Boots take 2 s here, longer than any quick retry: both boards
    are brought back and the deployments end deployed."""
    async with make_site(tmp_path, image_dir, boot_delay=200.0, card_write_mbps=(6.0, 6.0)) as site:
        ids = await reserve(site, ["pi-1", "pi-2"])
        for rid in ids:
            await deploy(site, rid)
        name = site.env["name"]
        mid = f"{name}: write: "

        async def underway(rid: int) -> None:
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                r = await _ok(await site.client.get(f"/api/reservations/{rid}", headers=USER))
                if any(e["message"].startswith(mid) and "0 MiB of" not in e["message"] for e in r["events"]):
                    return
                assert r["status"] in ("scheduled", "deploying"), r["events"]
                assert asyncio.get_running_loop().time() < deadline, r["events"]
                await asyncio.sleep(0.05)

        await underway(ids[1])
        board = site.cluster.board("pi-2")
        boots = board.boots
        await board.power_glitch(1.0)
        await underway(ids[0])
        await power(site.inventory, 1, on=False)
        for rid, node in zip(ids, ("pi-1", "pi-2"), strict=True):
            res, _ = await follow(site, rid, 120)
            assert res["status"] == "deployed", (node, res["error"], res["events"][-8:])
            messages = " | ".join(e["message"] for e in res["events"])
            assert "is back on the netboot system" in messages, messages
            if node == "pi-1":
                assert "lost power (its PoE port is off): powering it on" in messages
            else:
                assert "lost the connection to pi-2" in messages
            assert messages.count("write the image: started") == 1  # the step resumed, not the process
        assert board.boots >= boots + 2  # after the glitch, then into the deployed system
