"""The board network of one simulator instance: its subnet, its addresses and the names it owns.

The boards sit on a private IPv4 network behind the simulated switch; the agent host reaches it
through one veth, the uplink, whose host end is the only thing of the simulator in the host's
network namespace. Its name carries a random instance id (`psim` + 6 hex digits) and its alias
says who owns it, so that parallel simulators never collide and a sweep at start-up can remove
only the leftovers of dead simulators.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST_IF_PREFIX = "psim"
ALIAS_PREFIX = "piseduce-sim"
# Candidate board networks: 10.200.0.0 - 10.254.255.255, away from the usual 10.0/10.1 LANs.
POOL = ipaddress.IPv4Network("10.200.0.0/13")
FIRST_BOARD_HOST = 10  # board i (1-based) is network + 9 + i; .1 is the agent host (the uplink)
LOCK_FILE = Path("/run/lock/piseduce-sim-net.lock")


class NetPlanError(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    instance: str  # 6 hex digits
    network: ipaddress.IPv4Network

    @property
    def host_if(self) -> str:
        return f"{HOST_IF_PREFIX}{self.instance}"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    def board_ip(self, index: int) -> ipaddress.IPv4Address:
        return self.network.network_address + FIRST_BOARD_HOST - 1 + index

    def cidr(self, address: ipaddress.IPv4Address) -> str:
        return f"{address}/{self.network.prefixlen}"

    def alias(self, pid: int) -> str:
        return f"{ALIAS_PREFIX} id={self.instance} pid={pid} start={_start_time(pid)}"


def prefix_for(boards: int) -> int:
    """The longest prefix holding the agent host, the boards and a few spare addresses."""
    needed = boards + FIRST_BOARD_HOST + 1
    prefix = 24
    while prefix > 16 and 2 ** (32 - prefix) < needed:
        prefix -= 1
    if 2 ** (32 - prefix) < needed:
        raise NetPlanError(f"{boards} boards do not fit in a /16 board network")
    return prefix


def _json(cmd: list[str]) -> list[dict[str, object]]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20)
    if out.returncode != 0:
        raise NetPlanError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    data = json.loads(out.stdout or "[]")
    return data if isinstance(data, list) else []


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of the host's routes (all tables) and addresses."""
    used: list[ipaddress.IPv4Network] = []
    for route in _json(["ip", "-j", "-4", "route", "show", "table", "all"]):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    for link in _json(["ip", "-j", "-4", "addr"]):
        for addr in link.get("addr_info", []) or []:  # type: ignore[attr-defined]
            with contextlib.suppress(ValueError, KeyError, TypeError):
                used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return used


def choose_network(boards: int, wanted: str | None, previous: str | None) -> ipaddress.IPv4Network:
    """`wanted` (the operator's), else the previous run's if still free, else a free one of POOL."""
    used = networks_in_use()
    prefix = prefix_for(boards)

    def free(net: ipaddress.IPv4Network) -> bool:
        return not any(net.overlaps(u) for u in used)

    if wanted:
        try:
            net = ipaddress.IPv4Network(wanted, strict=True)
        except ValueError as exc:
            raise NetPlanError(
                f"board network {wanted!r}: {exc} (an IPv4 network, e.g. 10.42.0.0/24)") from None
        if net.prefixlen > prefix:
            raise NetPlanError(f"board network {wanted}: {boards} boards need an IPv4 /{prefix} or larger")
        if not free(net):
            raise NetPlanError(f"board network {wanted} overlaps a network of this host")
        return net
    if previous:
        with contextlib.suppress(ValueError):
            last = ipaddress.IPv4Network(previous, strict=True)
            if last.prefixlen <= prefix and free(last):
                return last
    candidates: list[ipaddress.IPv4Network] = list(POOL.subnets(new_prefix=prefix))
    start = secrets.randbelow(len(candidates))
    for candidate in candidates[start:] + candidates[:start]:
        if free(candidate):
            return candidate
    raise NetPlanError(f"no free /{prefix} left in {POOL} for the board network")


def new_instance() -> str:
    existing = {str(link.get("ifname", "")) for link in _json(["ip", "-j", "link"])}
    while True:
        instance = secrets.token_hex(3)
        if f"{HOST_IF_PREFIX}{instance}" not in existing:
            return instance


@contextlib.contextmanager
def allocation_lock() -> Iterator[None]:
    """Held from choosing a network until its address is on the uplink: parallel simulators on
    one host then see each other's networks as taken."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rpartition(")")[2].split()[19]


def _alias_owner_alive(alias: str) -> bool:
    fields = dict(part.split("=", 1) for part in alias.split()[1:] if "=" in part)
    pid = fields.get("pid", "")
    return pid.isdigit() and _start_time(int(pid)) == fields.get("start")


def sweep() -> list[str]:
    """Delete the uplinks of simulators that are gone (tagged by their alias); returns their names.
    Interfaces without our tag, or whose owner still runs, are never touched."""
    removed = []
    for link in _json(["ip", "-j", "link"]):
        name, alias = str(link.get("ifname", "")), str(link.get("ifalias", ""))
        if not (name.startswith(HOST_IF_PREFIX) and alias.startswith(ALIAS_PREFIX + " ")):
            continue
        if _alias_owner_alive(alias):
            continue
        done = subprocess.run(["ip", "link", "del", name], capture_output=True, check=False, timeout=20)
        if done.returncode == 0:
            removed.append(name)
    return removed
