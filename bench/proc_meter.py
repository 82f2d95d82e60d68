"""What a benchmark phase cost: CPU seconds of processes (from /proc/PID/stat), calls counted by
the fake agents, and the load, read before and after, so that a wall-clock figure on a shared
machine comes with the work behind it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    """The direct children of `pid` (the web UI supervisor's workers)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Reading:
    webui: float
    agents: float
    calls: dict[str, int]


class Meter:
    """Reads the web UI's processes (supervisor and workers), the fake agents' processes and
    their call counters (`counters()`: route -> calls so far, summed over the agents)."""

    def __init__(self, webui_pid: int, agent_pids: list[int], counters: object) -> None:
        self.webui_pid = webui_pid
        self.agent_pids = agent_pids
        self.counters = counters

    def read(self) -> Reading:
        webui = sum(cpu_seconds(p) for p in [self.webui_pid, *children(self.webui_pid)])
        agents = sum(cpu_seconds(p) for p in self.agent_pids)
        return Reading(webui, agents, dict(self.counters()))  # type: ignore[operator]

    @staticmethod
    def per_page(before: Reading, after: Reading, pages: int) -> tuple[float, float, dict[str, float]]:
        """(web UI CPU ms, agents' CPU ms, calls by route) per page between two readings."""
        calls = {k: (after.calls.get(k, 0) - before.calls.get(k, 0)) / pages for k in after.calls}
        return ((after.webui - before.webui) * 1000 / pages, (after.agents - before.agents) * 1000 / pages,
                {k: v for k, v in calls.items() if v})
