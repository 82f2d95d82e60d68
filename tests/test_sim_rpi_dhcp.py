"""DHCP on the simulated cluster's real board network: the dnsmasq file `network-config` writes,
served by the real dnsmasq the simulator runs on the board network, and busybox's udhcpc in each
board (real mode only: namespaces need root)."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from pathlib import Path

import pytest

from helpers.rpi_fixtures import connect, nfs_boot_folder, power, require_real_mode, running_cluster
from helpers.waiting import wait_until
from piseduce.agent.drivers.raspberry.netconfig import BoardNetwork, render
from piseduce.agent.models import Node
from piseduce.sim.rpi.cluster import RpiCluster

pytestmark = pytest.mark.slow


def require_dhcp() -> None:
    require_real_mode()
    for tool, package in (("dnsmasq", "dnsmasq"), ("udhcpc", "udhcpc")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {package}; ./run setup installs it)")


def board_network(cluster: RpiCluster, tftp: Path) -> BoardNetwork:
    """What an operator's agent config says of the simulator's board network."""
    inv = cluster.inventory()
    net = ipaddress.IPv4Network(inv["network"])
    hosts = list(net.hosts())
    return BoardNetwork(
        agent="sim", interface=inv["uplink"]["host_if"], network=net,
        server=ipaddress.IPv4Address(inv["uplink"]["ip"]), dhcp_range=(hosts[199], hosts[209]),
        router=None, tftp_root=str(tftp), nfs_root=str(cluster.opts.nfs_root.resolve()),
    )


def node(name: str, mac: str, ip: ipaddress.IPv4Address) -> Node:
    return Node(name=name, ip=str(ip), attrs={"mac": mac}, present=True)


def leases(cluster: RpiCluster) -> dict[str, str]:
    """MAC -> address, from the lease file of the simulator's dnsmasq."""
    path = cluster.opts.state_dir / "dhcp" / "dnsmasq.leases"
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
        net = board_network(cluster, cluster.opts.tftp_root.resolve())
        one, two = cluster.board("pi-1"), cluster.board("pi-2")
        static = net.network.network_address + 77
        files = render(net, [node("pi-1", one.identity.mac, static)])
        assert f"dhcp-host={one.identity.mac},{static},pi-1" in files.dnsmasq
        conf.write_text(files.dnsmasq)
        await wait_until(lambda: cluster.dhcp_served == 1, 10)

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
        conf.write_text(render(net, [node("pi-1", one.identity.mac, static),
                                     node("pi-2", two.identity.mac, other)]).dnsmasq)
        await wait_until(lambda: cluster.dhcp_served == 2, 10)
        await power(cluster.inventory(), two.identity.port, on=False)
        await wait_until(lambda: two.system == "off", 30)
        await boot(cluster, "pi-2")
        assert two.address == (str(other), 22)
        async with await connect(cluster, "pi-2", key) as conn:
            assert (await conn.run("true")).exit_status == 0

        # a file dnsmasq refuses: the last good one keeps serving
        conf.write_text("dhcp-range=nonsense\n")
        await asyncio.sleep(1)
        assert cluster.dhcp_served == 2
