"""What a simulator leaves behind: its processes (pid + start time), network namespaces, links
and routes, for the tests that check nothing of it remains after it exits."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`, with its start time (a pid is reused, a (pid, start) is not)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            fields = _stat(child)
            if fields is not None and child not in found:
                found[child] = fields[19]
                todo.append(child)
    return found


def alive(procs: dict[int, str]) -> list[int]:
    return [pid for pid, start in procs.items() if (f := _stat(pid)) is not None and f[19] == start]


def net_namespaces(pids: list[int]) -> set[str]:
    out = set()
    for pid in pids:
        try:
            out.add(os.readlink(f"/proc/{pid}/ns/net"))
        except OSError:
            continue
    return out - {os.readlink("/proc/self/ns/net")}


def namespaces_in_use() -> set[str]:
    return net_namespaces([int(p) for p in os.listdir("/proc") if p.isdigit()])


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def routes_to(network: str) -> list[str]:
    routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True, text=True,
                                       check=True).stdout or "[]")
    return [r["dst"] for r in routes if r.get("dst") == network]


def comm(pid: int) -> str:
    """The process's command name; empty when it has just exited (a board's short-lived child)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def remains(procs: dict[int, str], host_if: str, network: str, namespaces: set[str]) -> bool:
    """Whether anything of a simulator is left: a process, its uplink, its route, a namespace."""
    return bool(alive(procs) or link_exists(host_if) or routes_to(network)
                or namespaces & namespaces_in_use())
