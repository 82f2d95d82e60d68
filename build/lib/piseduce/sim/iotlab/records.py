"""The emulated IoT-LAB site's records: the experiment and node states, the nodes (and how a site's
are made from counts per architecture), users with their profiles, experiments, the fault knobs
and transition timings, and the API error the routes answer."""

from __future__ import annotations

import datetime as dt
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from piseduce.sim.iotlab.consumption import Monitoring

# Architectures of the real testbed, by the short name used in node addresses.
ARCHIS = {
    "m3": "m3:at86rf231",
    "a8": "a8:at86rf231",
    "wsn430": "wsn430:cc1101",
    "nrf52dk": "nrf52dk:ble",
    "samr21": "samr21:at86rf233",
    "firefly": "firefly:multi",
}

WAITING, TO_LAUNCH, LAUNCHING, RUNNING, FINISHING = "Waiting", "toLaunch", "Launching", "Running", "Finishing"
TERMINATED, STOPPED, ERROR = "Terminated", "Stopped", "Error"
OAR_STATES = (WAITING, TO_LAUNCH, LAUNCHING, RUNNING, FINISHING, TERMINATED, STOPPED, ERROR)
ACTIVE = (WAITING, TO_LAUNCH, LAUNCHING, RUNNING, FINISHING)
HOLDING = (TO_LAUNCH, LAUNCHING, RUNNING, FINISHING)  # the experiment's nodes are Busy
FINAL = (TERMINATED, STOPPED, ERROR)
NODE_STATES = ("Alive", "Busy", "Suspected", "Dead", "Absent")

PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_DURATION_MIN = 7 * 24 * 60


class ApiError(Exception):
    """An answer of the API other than 2xx: `{"code": code, "message": message}`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ids_string(ids: list[int]) -> str:
    """1,2,3,5,7,8 → "1-3+5+7-8" (the testbed's compact node id format)."""
    parts: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return "+".join(parts)


@dataclass
class Node:
    address: str  # network address, e.g. m3-1.strasbourg.iot-lab.info
    archi: str
    site: str
    uid: str
    x: float
    y: float
    z: float
    state: str = "Alive"
    mobile: bool = False

    @property
    def number(self) -> int:
        return int(self.address.split(".", 1)[0].rsplit("-", 1)[1])

    def as_json(self, busy: bool) -> dict[str, Any]:
        return {
            "archi": self.archi,
            "camera": None,
            "mobile": int(self.mobile),
            "mobility_type": "turtlebot2" if self.mobile else "",
            "network_address": self.address,
            "production": "YES",
            "site": self.site,
            "state": "Busy" if busy and self.state == "Alive" else self.state,
            "uid": self.uid,
            "x": f"{self.x:.2f}",
            "y": f"{self.y:.2f}",
            "z": f"{self.z:.2f}",
        }


@dataclass
class User:
    login: str
    password: str
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    ssh_keys: list[str] = field(default_factory=list)


@dataclass
class Experiment:
    id: int
    user: str
    name: str | None
    type: str
    nodes: list[str]
    duration: int  # minutes
    reservation: int | None  # epoch of the requested start; None = as soon as possible
    submitted: float
    description: dict[str, Any]
    files: dict[str, bytes]
    state: str = WAITING
    since: float = 0.0  # when the current state began
    start: float | None = None
    stop: float | None = None
    end_state: str = TERMINATED  # what Finishing leads to
    deployment: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""
    monitoring: Monitoring = field(default_factory=Monitoring)  # profiles on its nodes, over time

    def interval(self, now: float) -> tuple[float, float]:
        begin = self.start if self.start is not None else max(float(self.reservation or 0), self.since, now)
        return begin, begin + self.duration * 60

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "state": self.state,
            "type": self.type,
            "nb_nodes": len(self.nodes),
            "submission_date": iso(self.submitted),
            # Not started: its reservation date, or the epoch (iotlabcli shows that one as "Unknown").
            "start_date": iso(self.start if self.start is not None else self.reservation or 0),
            "stop_date": iso(self.stop),
            "submitted_duration": self.duration,
            "scheduled_date": iso(self.reservation) if self.reservation else None,
        }

    def as_json(self) -> dict[str, Any]:
        out = self.summary()
        effective = None
        if self.start is not None:
            effective = int(((self.stop or time.time()) - self.start) // 60)
        out.update(
            {
                "nodes": list(self.nodes),
                "effective_duration": effective,
                "reservation": self.reservation,
                "firmwareassociations": self.description.get("firmwareassociations"),
                "profileassociations": self.description.get("profileassociations"),
                "associations": self.description.get("associations"),
                "siteassociations": self.description.get("siteassociations"),
                "deploymentresults": dict(self.deployment),
            }
        )
        if self.state == ERROR and self.error:
            # Not a documented field of the real API: the emulator's way to say why a launch failed.
            out["error"] = self.error
        return out


@dataclass
class Faults:
    """Knobs for tests: what the next requests do wrong."""

    submit_error: str = ""  # submissions are refused (HTTP 500) with this message
    launch_error: str = ""  # experiments that reach Launching end in Error with this message
    error_rate: float = 0.0  # share of authenticated requests answered 503

    def as_json(self) -> dict[str, Any]:
        return {
            "submit_error": self.submit_error,
            "launch_error": self.launch_error,
            "error_rate": self.error_rate,
        }


@dataclass
class Timing:
    """Seconds spent in each transient state at time scale 1 (a real launch flashes every node)."""

    to_launch: float = 2.0
    launching: float = 8.0
    finishing: float = 3.0


def make_nodes(site: str, counts: dict[str, int], seed: int = 0) -> list[Node]:
    rng = random.Random(f"{site}-{seed}")
    nodes: list[Node] = []
    for row, (short, count) in enumerate(counts.items()):
        archi = ARCHIS.get(short, f"{short}:unknown")
        for i in range(1, count + 1):
            nodes.append(
                Node(
                    address=f"{short}-{i}.{site}.iot-lab.info",
                    archi=archi,
                    site=site,
                    uid=f"{rng.randrange(0x10000):04x}",
                    x=round(0.6 * i, 2),
                    y=round(1.2 * row + 0.3, 2),
                    z=round(2.0 + (i % 2) * 0.6, 2),
                )
            )
    return nodes


def parse_counts(spec: str) -> dict[str, int]:
    """ "m3=12,a8=4" → {"m3": 12, "a8": 4}."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        short, _, number = part.partition("=")
        if not re.fullmatch(r"[a-z0-9]+", short) or not number.isdigit() or not 0 < int(number) <= 1000:
            raise ValueError(f"bad node count {part!r}: expected archi=number, e.g. m3=12")
        counts[short] = int(number)
    if not counts:
        raise ValueError("no nodes: give e.g. m3=12,a8=4")
    return counts
