"""After `piseduce sim rpi` exits, by Ctrl-C or by `kill -9`, nothing of it remains: no process,
network namespace, veth, bridge, route, mount or loop device (real mode)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.rpi_fixtures import make_agent_key, power, require_real_mode
from helpers.sim_leftovers import alive, comm, descendants, link_exists, net_namespaces, remains, routes_to
from helpers.waiting import wait_until
from piseduce.sim.images import FLAVORS, build_environment
from piseduce.sim.rpi import TEMPLATE

pytestmark = pytest.mark.slow


def loop_devices_under(folder: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(str(folder)):
                found.append(backing.parent.parent.name)
        except OSError:
            continue
    return found


def mounts_of(pids: list[int], folder: Path) -> int:
    count = 0
    for pid in pids:
        try:
            count += Path(f"/proc/{pid}/mountinfo").read_text().count(str(folder))
        except OSError:
            continue
    return count


async def _tcp_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _start(tmp_path: Path) -> tuple[asyncio.subprocess.Process, dict, Path]:
    key = make_agent_key(tmp_path)
    state = tmp_path / "state"
    inventory_file = tmp_path / "inventory.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piseduce.cli", "sim", "rpi", "--boards", "2", "--mode", "real",
        "--state-dir", str(state), "--tftp-root", str(tmp_path / "tftp"), "--nfs-root", str(tmp_path / "nfs"),
        "--time-scale", "50", "--boot-delay", "5", "--inventory-file", str(inventory_file),
        "--agent-pubkey", f"{key}.pub", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await wait_until(inventory_file.exists, 30, 0.05)
    return proc, json.loads(inventory_file.read_text()), state


async def _boot_both(tmp_path: Path, inv: dict, state: Path) -> None:
    """pi-1 boots an Ubuntu-like card (its root partition mounted through a loop device), pi-2 the
    netboot system (an overlay on the NFS root)."""
    env = build_environment(tmp_path / "img", "ubuntu", size_mb=64, compress=None)
    card_file = state / "boards/pi-1/sdcard.img"
    with open(tmp_path / "img" / env["image"], "rb") as src, open(card_file, "r+b") as card:
        shutil.copyfileobj(src, card)
    pi1, pi2 = inv["boards"]
    folder = tmp_path / "tftp" / pi1["serial"]
    folder.mkdir()
    (folder / "cmdline.txt").write_text(FLAVORS["ubuntu"]["cmdline"])
    shutil.copytree(tmp_path / "tftp" / TEMPLATE, tmp_path / "tftp" / pi2["serial"])
    await power(inv, 1, on=True)
    await power(inv, 2, on=True)
    for board in (pi1, pi2):
        await _wait_async(lambda b=board: _tcp_open(b["ip"], 22), 30)


async def _wait_async(check, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
async def test_nothing_remains_after_the_simulator_exits(tmp_path: Path, sig: signal.Signals) -> None:
    require_real_mode()
    proc, inv, state = await _start(tmp_path)
    try:
        await _boot_both(tmp_path, inv, state)
        procs = descendants(proc.pid)
        pids = list(procs)
        namespaces = net_namespaces(pids)
        host_if, network = inv["uplink"]["host_if"], inv["network"]
        # What there is while it runs: the switch's and two boards' namespaces, sshd in both
        # boards, the uplink and its route, a loop device for pi-1's card, the boards' mounts.
        assert len(namespaces) >= 3, namespaces
        assert link_exists(host_if) and routes_to(network) == [network]
        assert loop_devices_under(state), "pi-1's root filesystem is mounted from its card"
        assert mounts_of(pids, state) >= 2
        names = {comm(p) for p in alive(procs)} - {""}
        assert {"sshd", "piseduce-init", "sleep"} <= names, names
        proc.send_signal(sig)
        status = await asyncio.wait_for(proc.wait(), 30)
        assert status == (-9 if sig == signal.SIGKILL else 0)

        def gone() -> bool:
            return not (remains(procs, host_if, network, namespaces) or loop_devices_under(state))

        await wait_until(gone, 15, 0.1)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_startup_sweep_removes_only_dead_simulators_uplinks() -> None:
    """In a throwaway network namespace: an uplink tagged by a dead simulator goes; one of a live
    simulator, and an interface with our prefix but not our tag, stay."""
    require_real_mode()
    script = """
import os, subprocess, json
from piseduce.sim.rpi import netplan
def add(name, alias):
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    if alias:
        subprocess.run(["ip", "link", "set", name, "alias", alias], check=True)
add("psimdead00", "piseduce-sim id=dead00 pid=999999 start=1")
me = os.getpid()
add("psimlive00", "piseduce-sim id=live00 pid={} start={}".format(me, netplan._start_time(me)))
add("psimother0", "")
removed = netplan.sweep()
left = sorted(l["ifname"] for l in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
              text=True, check=True).stdout) if l["ifname"].startswith("psim"))
print(json.dumps([removed, left]))
"""
    out = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", script], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    removed, left = json.loads(out.stdout)
    assert removed == ["psimdead00"]
    assert left == ["psimlive00", "psimlive00p", "psimother0", "psimother0p"]
