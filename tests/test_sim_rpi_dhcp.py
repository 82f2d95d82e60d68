"""DHCP on the simulated cluster's real board network: the dnsmasq file `network-config` writes,
served by the real dnsmasq the simulator runs on the board network, and busybox's udhcpc in each
board (real mode only: namespaces need root)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.rpi_fixtures import (
    connect,
    make_agent_key,
    nfs_boot_folder,
    power,
    require_real_mode,
    running_cluster,
)
from helpers.sim_leftovers import alive, comm, descendants, net_namespaces, remains
from helpers.waiting import wait_until
from piseduce.agent.drivers.raspberry.netconfig import BoardNetwork, render
from piseduce.agent.models import Node
from piseduce.sim.rpi import TEMPLATE
from piseduce.sim.rpi.cluster import RpiCluster

pytestmark = pytest.mark.slow


def require_dhcp() -> None:
    require_real_mode()
    for tool, package in (("dnsmasq", "dnsmasq"), ("udhcpc", "udhcpc")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {package}; ./run setup installs it)")


def publish(conf: Path, text: str) -> None:
    """Put the dnsmasq file in place at once, as `piseduce agent network-config --output` does: the
    simulator restarts dnsmasq on every change it sees, and a file written in place can be seen
    empty first (a CI run had dnsmasq started twice, and the pid the test held was gone)."""
    tmp = conf.with_name(conf.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, conf)


def board_network(inv: dict[str, Any], tftp: Path, nfs: Path) -> BoardNetwork:
    """What an operator's agent config says of the simulator's board network (a range of 11
    addresses for boards nobody registered)."""
    net = ipaddress.IPv4Network(inv["network"])
    hosts = list(net.hosts())
    return BoardNetwork(
        agent="sim", interface=inv["uplink"]["host_if"], network=net,
        server=ipaddress.IPv4Address(inv["uplink"]["ip"]), dhcp_range=(hosts[199], hosts[209]),
        router=None, tftp_root=str(tftp.resolve()), nfs_root=str(nfs.resolve()),
    )


def node(name: str, mac: str, ip: ipaddress.IPv4Address) -> Node:
    return Node(name=name, ip=str(ip), attrs={"mac": mac}, present=True)


def leases(cluster: RpiCluster) -> dict[str, str]:
    """MAC -> address, from the lease file of the simulator's dnsmasq."""
    path = Path(cluster.inventory()["dhcp"]["lease_file"])
    assert path.parent == cluster.opts.state_dir / "dhcp"
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = line.split()
        if len(fields) >= 3:
            out[fields[1]] = fields[2]
    return out


async def boot(cluster: RpiCluster, name: str) -> None:
    board = cluster.board(name)
    nfs_boot_folder(cluster, name)
    await power(cluster.inventory(), board.identity.port, on=True)
    await wait_until(lambda: board.system == "nfs", 30)


async def test_the_generated_file_hands_out_static_and_range_addresses(tmp_path: Path) -> None:
    require_dhcp()
    conf = tmp_path / "dnsmasq.conf"
    async with running_cluster(tmp_path, boards=3, dhcp_config=conf) as (cluster, key):
        assert cluster.mode == "real"
        net = board_network(cluster.inventory(), cluster.opts.tftp_root, cluster.opts.nfs_root)
        one, two = cluster.board("pi-1"), cluster.board("pi-2")
        static = net.network.network_address + 77
        files = render(net, [node("pi-1", one.identity.mac, static)])
        assert f"dhcp-host={one.identity.mac},{static},pi-1" in files.dnsmasq
        publish(conf, files.dnsmasq)
        await wait_until(lambda: cluster.dhcp_served == 1, 10)
        assert cluster.inventory()["dhcp"]["served"] == 1

        await asyncio.gather(boot(cluster, "pi-1"), boot(cluster, "pi-2"))
        assert one.address == (str(static), 22)
        start, end = net.dhcp_range or (static, static)
        got = ipaddress.IPv4Address(two.address[0])
        assert start <= got <= end, (got, net.dhcp_range)
        assert leases(cluster) == {one.identity.mac: str(static), two.identity.mac: str(got)}
        for name in ("pi-1", "pi-2"):  # SSH answers at the leased address, with the board's key
            async with await connect(cluster, name, key) as conn:
                done = await conn.run("ip -o -4 addr show dev eth0")
                assert f" {cluster.board(name).address[0]}/" in str(done.stdout), (done.stdout, done.stderr)

        # pi-2 registered at a static address: the file rewritten, dnsmasq restarted, next boot there
        other = net.network.network_address + 78
        publish(conf, render(net, [node("pi-1", one.identity.mac, static),
                                     node("pi-2", two.identity.mac, other)]).dnsmasq)
        await wait_until(lambda: cluster.dhcp_served == 2, 10)
        await power(cluster.inventory(), two.identity.port, on=False)
        await wait_until(lambda: two.system == "off", 30)
        await boot(cluster, "pi-2")
        assert two.address == (str(other), 22)
        async with await connect(cluster, "pi-2", key) as conn:
            assert (await conn.run("true")).exit_status == 0

        # a file dnsmasq refuses: the last good one keeps serving
        publish(conf, "dhcp-range=nonsense\n")
        await asyncio.sleep(1)
        assert cluster.dhcp_served == 2


async def _tcp_open(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(1):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
async def test_no_dnsmasq_remains_after_the_simulator_exits(tmp_path: Path, sig: signal.Signals) -> None:
    require_dhcp()
    key = make_agent_key(tmp_path)
    state, conf, inventory_file = tmp_path / "state", tmp_path / "dnsmasq.conf", tmp_path / "inventory.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piseduce.cli", "sim", "rpi", "--boards", "2", "--mode", "real",
        "--state-dir", str(state), "--tftp-root", str(tmp_path / "tftp"), "--nfs-root", str(tmp_path / "nfs"),
        "--time-scale", "50", "--boot-delay", "5", "--inventory-file", str(inventory_file),
        "--agent-pubkey", f"{key}.pub", "--dhcp-config", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(inventory_file.exists, 30, 0.05)
        inv: dict[str, Any] = json.loads(inventory_file.read_text())
        board_net = board_network(inv, tmp_path / "tftp", tmp_path / "nfs")
        net = board_net.network
        pi1 = inv["boards"][0]
        static = net.network_address + 60
        publish(conf, render(board_net, [node("pi-1", pi1["mac"], static)]).dnsmasq)
        shutil.copytree(tmp_path / "tftp" / TEMPLATE, tmp_path / "tftp" / pi1["serial"])
        await wait_until((state / "dhcp" / "dnsmasq.pid").exists, 15, 0.05)
        await power(inv, 1, on=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await _tcp_open(str(static), 22):  # SSH answers at the static lease's address
            assert loop.time() < deadline, "pi-1 never answered at its static address"
            await asyncio.sleep(0.1)
        procs = descendants(proc.pid)
        namespaces = net_namespaces(list(procs))
        dnsmasq = [p for p in alive(procs) if comm(p) == "dnsmasq"]
        assert len(dnsmasq) == 1, {p: comm(p) for p in procs}
        # its pid file: the pid in the supervisor's PID namespace (the last of NSpid)
        nspid = next(line for line in Path(f"/proc/{dnsmasq[0]}/status").read_text().splitlines()
                     if line.startswith("NSpid:"))
        assert int((state / "dhcp" / "dnsmasq.pid").read_text()) == int(nspid.split()[-1]) != dnsmasq[0]
        host_if = inv["uplink"]["host_if"]
        proc.send_signal(sig)
        async with asyncio.timeout(30):
            status = await proc.wait()
        assert status == (-9 if sig == signal.SIGKILL else 0)

        def gone() -> bool:
            return not remains(procs, host_if, str(net), namespaces)

        await wait_until(gone, 15, 0.1)
        assert not os.path.exists(f"/proc/{dnsmasq[0]}") or comm(dnsmasq[0]) != "dnsmasq"
        if sig == signal.SIGINT:  # stopped in order: its pid file goes with it (kill -9 leaves a stale one)
            assert not (state / "dhcp" / "dnsmasq.pid").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_server_that_answers_late_still_gives_the_board_its_lease(tmp_path: Path) -> None:
    """dnsmasq answers nobody while it pings an address it is about to offer (up to 3 s), and udhcpc
    -n gives up after one round of three unanswered REQUESTs: a board that asked during such a
    pause must ask again, as the firmware does, not stay without an address (a flaky failure of
    two boards booting at once, made certain here by pausing dnsmasq for 4 s)."""
    require_dhcp()
    conf = tmp_path / "dnsmasq.conf"
    async with running_cluster(tmp_path, boards=2, dhcp_config=conf) as (cluster, _key):
        net = board_network(cluster.inventory(), cluster.opts.tftp_root, cluster.opts.nfs_root)
        one, static = cluster.board("pi-1"), net.network.network_address + 77
        publish(conf, render(net, [node("pi-1", one.identity.mac, static)]).dnsmasq)
        await wait_until(lambda: cluster.dhcp_served == 1, 10)
        servers = [pid for pid in descendants(os.getpid()) if comm(pid) == "dnsmasq"]
        assert len(servers) == 1, servers
        log = cluster.opts.state_dir / "dhcp" / "dnsmasq.log"
        booting = asyncio.ensure_future(boot(cluster, "pi-1"))
        try:  # paused once it offered: the board's REQUESTs go unanswered for 4 s
            await wait_until(lambda: "DHCPOFFER" in log.read_text() and not booting.done(), 30, interval=0.01)
            os.kill(servers[0], signal.SIGSTOP)
            await asyncio.sleep(4)
        finally:
            os.kill(servers[0], signal.SIGCONT)
        await booting
        assert one.address == (str(static), 22)


async def test_without_a_lease_a_board_does_not_boot(tmp_path: Path) -> None:
    """No file yet (no dnsmasq), then a file with no range and no lease for pi-1: pi-1 asks and
    gets no answer, so it boots nothing and says why; pi-2, registered, boots."""
    require_dhcp()
    conf = tmp_path / "dnsmasq.conf"
    async with running_cluster(tmp_path, boards=2, dhcp_config=conf) as (cluster, _key):
        one, two = cluster.board("pi-1"), cluster.board("pi-2")
        nfs_boot_folder(cluster, "pi-1")
        await power(cluster.inventory(), 1, on=True)
        await wait_until(lambda: one.system == "none", 30)
        assert "no DHCP" in one.last_boot_error and cluster.dhcp_served == 0
        await power(cluster.inventory(), 1, on=False)

        net = board_network(cluster.inventory(), cluster.opts.tftp_root, cluster.opts.nfs_root)
        static_only = BoardNetwork(**{**net.__dict__, "dhcp_range": None})
        files = render(static_only, [node("pi-2", two.identity.mac, net.network.network_address + 90)])
        assert "static" in files.dnsmasq
        publish(conf, files.dnsmasq)
        await wait_until(lambda: cluster.dhcp_served == 1, 10)
        await asyncio.gather(boot(cluster, "pi-2"), power(cluster.inventory(), 1, on=True))
        assert two.address[0] == str(net.network.network_address + 90)
        await wait_until(lambda: one.system == "none", 30)
        assert "no DHCP" in one.last_boot_error
        assert one.identity.mac not in leases(cluster)


def test_a_dhcp_config_in_no_folder_is_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "no" / "dnsmasq.conf"
    for bad, why in ((conf, f"the folder {conf.parent} does not exist"), (tmp_path, "it is a folder")):
        done = subprocess.run(
            [sys.executable, "-m", "piseduce.cli", "sim", "rpi", "--state-dir", str(tmp_path / "s"),
             "--dhcp-config", str(bad)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines == [f"error: --dhcp-config {bad}: cannot write it: {why}" + (
            ", not a file" if bad == tmp_path else "")], done.stderr
