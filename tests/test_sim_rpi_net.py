"""The board network's planning (addresses, names, shaping and loss rules) and `sim rpi` saying
which kind of boards it runs."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from pathlib import Path

import pytest

from helpers.rpi_fixtures import make_agent_key
from helpers.waiting import wait_until
from piseduce.sim.rpi import netplan
from piseduce.sim.rpi.cluster import ClusterOptions
from piseduce.sim.rpi.mode import real_mode_problem, resolve
from piseduce.sim.rpi.netd import loss_ruleset, tbf_args


def test_addresses_of_the_board_network() -> None:
    plan = netplan.Plan("a1b2c3", ipaddress.IPv4Network("10.201.7.0/24"))
    assert plan.host_if == "psima1b2c3" and len(plan.host_if) <= 15
    assert str(plan.gateway) == "10.201.7.1" and str(plan.board_ip(1)) == "10.201.7.10"
    assert plan.cidr(plan.board_ip(240)) == "10.201.7.249/24"
    assert netplan.prefix_for(8) == 24 and netplan.prefix_for(245) == 24 and netplan.prefix_for(246) == 23
    assert netplan.prefix_for(1000) == 22
    with pytest.raises(netplan.NetPlanError, match="do not fit"):
        netplan.prefix_for(70000)


def test_a_chosen_network_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    used = [ipaddress.IPv4Network("10.201.7.0/24"), ipaddress.IPv4Network("192.168.1.0/24")]
    monkeypatch.setattr(netplan, "networks_in_use", lambda: used)
    assert str(netplan.choose_network(8, "10.42.0.0/24", None)) == "10.42.0.0/24"
    for wanted, reason in (("10.201.0.0/16", "overlaps"), ("10.42.0.0/28", "need an IPv4 /24"),
                           ("fd00::/64", "IPv4"), ("10.42.0.1/24", "host bits"), ("nonsense", "IPv4")):
        with pytest.raises(netplan.NetPlanError, match=reason):
            netplan.choose_network(8, wanted, None)
    # the previous run's network when still free, else another free one of the pool
    assert str(netplan.choose_network(8, None, "10.210.3.0/24")) == "10.210.3.0/24"
    other = netplan.choose_network(8, None, "10.201.7.0/24")
    assert other.subnet_of(netplan.POOL) and not any(other.overlaps(u) for u in used)


def test_shaping_and_loss_rules() -> None:
    args = tbf_args("p3", 1000.0)
    assert args[:6] == ["qdisc", "replace", "dev", "p3", "root", "tbf"]
    assert args[args.index("rate") + 1] == "1000000000bit" and int(args[args.index("burst") + 1]) >= 131072
    assert tbf_args("p3", None) == ["qdisc", "del", "dev", "p3", "root"]
    rules = loss_ruleset({1: 5.0, 2: 0.0, 3: 100.0})
    assert 'iifname "p1" numgen random mod 10000 < 500 counter drop' in rules
    assert 'oifname "p1" numgen random mod 10000 < 500 counter drop' in rules
    assert '"p2"' not in rules and 'oifname "p3" counter drop' in rules
    assert rules.startswith("table bridge piseduce_loss\ndelete table bridge piseduce_loss\n")


def test_modes() -> None:
    assert resolve("in-process") == ("in-process", "asked for")
    mode, why = resolve("auto")
    assert (mode == "real") == (real_mode_problem() is None) and why
    with pytest.raises(ValueError, match="unknown mode"):
        resolve("virtual")
    with pytest.raises(ValueError, match="unknown mode"):
        ClusterOptions(mode="virtual")
    with pytest.raises(ValueError, match="link_mbit"):
        ClusterOptions(link_mbit=0)


@pytest.mark.parametrize("mode", ["real", "in-process"])
async def test_sim_rpi_says_which_boards_it_runs(tmp_path: Path, mode: str) -> None:
    if mode == "real" and real_mode_problem():
        pytest.skip(f"needs the real mode of sim rpi: {real_mode_problem()}")
    key = make_agent_key(tmp_path)
    inventory_file = tmp_path / "inventory.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "piseduce.cli", "sim", "rpi", "--boards", "2", "--mode", mode,
        "--state-dir", str(tmp_path / "s"), "--tftp-root", str(tmp_path / "t"), "--nfs-root",
        str(tmp_path / "n"), "--inventory-file", str(inventory_file), "--agent-pubkey", f"{key}.pub",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(inventory_file.exists, 30, 0.05)
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        inv = json.loads(inventory_file.read_text())
        assert inv["mode"] == mode
        if mode == "real":
            expected = f"mode: real - each board is a Linux host on the board network {inv['network']}"
            assert first.startswith(expected), first
            assert {b["ssh_port"] for b in inv["boards"]} == {22}
            network = ipaddress.ip_network(inv["network"])
            assert all(ipaddress.ip_address(b["ip"]) in network for b in inv["boards"])
        else:
            assert first.startswith("mode: in-process - SSH servers on loopback ports"), first
            assert "asked for" in first
            assert {b["ip"] for b in inv["boards"]} == {"127.0.0.1"}
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_real_mode_refused_where_impossible(tmp_path: Path) -> None:
    """`--mode real` where namespaces are impossible: one clear line, nothing started."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import piseduce.sim.rpi.mode as m; m.real_mode_problem = lambda: 'not root (test)';"
        "from piseduce.cli import main; main()",
        "sim", "rpi", "--boards", "1", "--mode", "real", "--state-dir", str(tmp_path / "s"),
        "--tftp-root", str(tmp_path / "t"), "--nfs-root", str(tmp_path / "n"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, (out, err)
    assert "error: the real mode cannot run: not root (test)" in err.decode()
