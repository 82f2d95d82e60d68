"""Monitoring profiles on an emulated experiment's nodes, and the consumption measures they make.

On the real testbed a node's control node measures the open node's power, voltage and current as
its monitoring profile says (`consumption.period` µs per measure, averaged over
`consumption.average` measures) and the site server writes them, in OML text, to the owner's home
on the site's SSH frontend: `~/.iot-lab/<exp_id>/consumption/<node>_<n>.oml` (a node `m3-3` writes
`m3_3.oml`). A profile applies from the experiment's start (`profileassociations`) or from the
moment it is set on running nodes (`nodes/monitoring/<name>`, `--profile-load`) until it is reset
(`profile-reset`) or the experiment stops. The emulator keeps those segments per node and writes
the OML files from them on demand, with a deterministic power trace per architecture.

Its one liberty: a measure period shorter than MIN_INTERVAL is written at MIN_INTERVAL (the real
control node writes up to 7,000 lines a second, which no test reads). Quantities a profile does not
measure are written as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MIN_INTERVAL = 0.1  # seconds between two written measures, at the finest
MAX_LINES = 200_000  # per file: a long experiment is cut there, as a safety net
# Mean open-node draw (W) and supply voltage (V) per board, near the real boards' figures
# (an M3 draws ~55 mW at 3.3 V in the IoT-LAB tutorial's traces).
DRAW = {"m3": (0.055, 3.27), "a8": (0.78, 5.02), "wsn430": (0.03, 3.0), "custom": (0.12, 5.0)}

OML_SCHEMA = (
    "schema: 1 control_node_measures_consumption timestamp_s:uint32 timestamp_us:uint32 "
    "power:double voltage:double current:double"
)


@dataclass
class Segment:
    """One profile on one node from `start` until `end` (None: still measuring)."""

    profile: dict[str, Any]
    start: float
    end: float | None = None


def measures(profile: dict[str, Any] | None) -> bool:
    """Whether a profile measures any consumption quantity."""
    cons = (profile or {}).get("consumption")
    return isinstance(cons, dict) and any(cons.get(k) for k in ("power", "voltage", "current"))


def interval_of(profile: dict[str, Any]) -> float:
    """Seconds between two measures: period (µs) × average, at least MIN_INTERVAL."""
    cons = profile.get("consumption") or {}
    try:
        seconds = int(cons.get("period") or 0) * int(cons.get("average") or 0) / 1e6
    except (TypeError, ValueError):
        seconds = 0.0
    return max(seconds, MIN_INTERVAL)


@dataclass
class Monitoring:
    """The profile segments of one experiment's nodes."""

    segments: dict[str, list[Segment]] = field(default_factory=dict)

    def apply(self, nodes: list[str], profile: dict[str, Any] | None, t: float) -> None:
        """`profile` on `nodes` from `t` (None: no monitoring, as `profile-reset`)."""
        for node in nodes:
            runs = self.segments.setdefault(node, [])
            if runs and runs[-1].end is None:
                runs[-1].end = t
            if measures(profile):
                assert profile is not None
                runs.append(Segment(dict(profile), t))

    def close(self, t: float) -> None:
        """The experiment stopped: every profile stops measuring."""
        for runs in self.segments.values():
            if runs and runs[-1].end is None:
                runs[-1].end = t

    def nodes(self) -> list[str]:
        # list() first: the frontend's thread reads while the API's loop may add a node
        return sorted(n for n, runs in list(self.segments.items()) if runs)


def file_name(node: str) -> str:
    """`m3-3.strasbourg.iot-lab.info` → `m3_3.oml`, the testbed's name for its file."""
    return node.split(".", 1)[0].replace("-", "_") + ".oml"


def draw(node: str, t: float) -> tuple[float, float]:
    """(W, V) of a node at time t: its board's mean draw with a slow wave and a node-specific
    phase, so that two nodes and two moments differ but every read gives the same figures."""
    board = node.split("-", 1)[0]
    watts, volts = DRAW.get(board, DRAW["custom"])
    phase = sum(node.encode()) % 17
    wave = 0.25 * math.sin(2 * math.pi * (t + phase) / 30.0) + 0.05 * math.sin(t * 7.3 + phase)
    return watts * (1 + wave), volts * (1 - 0.004 * wave)


def oml_text(exp_id: int, node: str, runs: list[Segment], until: float) -> str:
    """The node's consumption file as the testbed writes it: the OML header (9 lines, the blank
    one included), then one tab-separated line per measure: time since start-time, schema 1,
    sequence number, t_s, t_us, power (W), voltage (V), current (A)."""
    started = int(runs[0].start) if runs else int(until)
    lines = [
        "protocol: 4",
        f"domain: {exp_id}",
        f"start-time: {started}",
        f"sender-id: {node.split('.', 1)[0]}",
        "app-name: control_node_measures",
        "schema: 0 _experiment_metadata subject:string key:string value:string",
        OML_SCHEMA,
        "content: text",
        "",
    ]
    seq = 0
    for run in runs:
        cons = run.profile.get("consumption") or {}
        step = interval_of(run.profile)
        end = min(run.end if run.end is not None else until, until)
        t = run.start + step
        while t <= end and seq < MAX_LINES:
            seq += 1
            watts, volts = draw(node, t)
            t_s, t_us = int(t), int(round((t - int(t)) * 1e6)) % 1_000_000
            power = watts if cons.get("power") else 0.0
            voltage = volts if cons.get("voltage") else 0.0
            current = watts / volts if cons.get("current") else 0.0
            lines.append(
                f"{t - started:.6f}\t1\t{seq}\t{t_s}\t{t_us}\t{power:.6f}\t{voltage:.6f}\t{current:.6f}"
            )
            t += step
    return "\n".join(lines) + "\n"
