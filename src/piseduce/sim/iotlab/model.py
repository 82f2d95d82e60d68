"""The state of one emulated FIT IoT-LAB site, in memory: nodes, users with their monitoring profiles,
and experiments that follow the OAR-like states of the real testbed.

States are computed lazily: every request first calls `Site.advance()`, which moves each experiment
along Waiting → toLaunch → Launching → Running → Finishing → Terminated/Stopped (or Error) according to
the clock. Transition delays are divided by the time scale; an experiment's duration is not, because
it is what the user booked and PiSeduce's calendar runs on real time.
"""

from __future__ import annotations

import datetime as dt
import hmac
import io
import json
import random
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
            "mobility_type": "",
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
            "start_date": iso(self.start),
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


class Site:
    """One site's nodes, users and experiments. Not thread-safe: the app serves it from one event loop."""

    def __init__(
        self,
        name: str,
        nodes: list[Node],
        users: list[User],
        *,
        time_scale: float = 1.0,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time scale must be positive")
        self.name = name
        self.nodes = {n.address: n for n in nodes}
        self.users = {u.login: u for u in users}
        self.time_scale = time_scale
        self.timing = timing or Timing()
        self.clock = clock
        self.faults = Faults()
        self.rng = random.Random(seed)
        self.experiments: dict[int, Experiment] = {}
        self._next_id = 400_000

    # ------------------------------------------------------------ accounts

    def authenticate(self, login: str, password: str) -> User | None:
        user = self.users.get(login)
        # compare_digest on both branches so that timing does not reveal which logins exist
        expected = user.password if user is not None else "\0" * len(password)
        if hmac.compare_digest(expected.encode(), password.encode()) and user is not None:
            return user
        return None

    def unlucky(self) -> bool:
        return self.faults.error_rate > 0 and self.rng.random() < self.faults.error_rate

    # ------------------------------------------------------------ time

    def _delay(self, seconds: float) -> float:
        return seconds / self.time_scale

    def held_nodes(self, exclude: int | None = None) -> dict[str, int]:
        """Node address → id of the experiment that holds it now."""
        held: dict[str, int] = {}
        for exp in self.experiments.values():
            if exp.state in HOLDING and exp.id != exclude:
                for n in exp.nodes:
                    held[n] = exp.id
        return held

    def advance(self) -> None:
        now = self.clock()
        changed = True
        while changed:
            changed = False
            for exp in sorted(self.experiments.values(), key=lambda e: e.id):
                while self._step(exp, now):
                    changed = True

    def _step(self, exp: Experiment, now: float) -> bool:
        if exp.state == WAITING:
            if exp.reservation is not None and now < exp.reservation:
                return False
            held = self.held_nodes(exclude=exp.id)
            if any(n in held or self.nodes[n].state not in ("Alive", "Busy") for n in exp.nodes):
                return False
            self._enter(exp, TO_LAUNCH, now)
            return True
        if exp.state == TO_LAUNCH:
            t = exp.since + self._delay(self.timing.to_launch)
            if now < t:
                return False
            self._enter(exp, LAUNCHING, t)
            # The fault is read when the launch begins, as a real flash failure would happen then.
            exp.error = self.faults.launch_error
            return True
        if exp.state == LAUNCHING:
            t = exp.since + self._delay(self.timing.launching)
            if now < t:
                return False
            if exp.error:
                self._enter(exp, ERROR, t)
                exp.stop = t
                exp.deployment = {"1": list(exp.nodes)}
            else:
                self._enter(exp, RUNNING, t)
                exp.start = t
                exp.deployment = {"0": list(exp.nodes)}
            return True
        if exp.state == RUNNING:
            assert exp.start is not None
            t = exp.start + exp.duration * 60
            if now < t:
                return False
            exp.end_state = TERMINATED
            self._enter(exp, FINISHING, t)
            return True
        if exp.state == FINISHING:
            t = exp.since + self._delay(self.timing.finishing)
            if now < t:
                return False
            self._enter(exp, exp.end_state, t)
            exp.stop = t
            return True
        return False

    @staticmethod
    def _enter(exp: Experiment, state: str, t: float) -> None:
        exp.state = state
        exp.since = t

    # ------------------------------------------------------------ experiments

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def owned(self, login: str, exp_id: int) -> Experiment:
        exp = self.experiments.get(exp_id)
        # Another user's experiment looks exactly like a missing one: nothing leaks.
        if exp is None or exp.user != login:
            raise ApiError(404, f"Experiment {exp_id} not found")
        return exp

    def submit(self, login: str, description: dict[str, Any], files: dict[str, bytes]) -> int:
        if self.faults.submit_error:
            raise ApiError(500, self.faults.submit_error)
        desc = dict(description)
        exp_type = desc.get("type")
        duration = desc.get("duration")
        if (
            not isinstance(duration, int)
            or isinstance(duration, bool)
            or not 1 <= duration <= MAX_DURATION_MIN
        ):
            raise ApiError(400, f"Invalid duration: {duration!r} (minutes, 1 to {MAX_DURATION_MIN})")
        reservation = desc.get("reservation")
        if reservation is not None and (not isinstance(reservation, int) or isinstance(reservation, bool)):
            raise ApiError(400, f"Invalid reservation date: {reservation!r} (epoch seconds)")
        now = self.clock()
        if reservation is not None and reservation < now - 60:
            raise ApiError(500, "Reservation date is in the past")
        name = desc.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 128):
            raise ApiError(400, "Invalid experiment name")
        if exp_type == "physical":
            nodes = self._physical_nodes(desc.get("nodes"))
        elif exp_type == "alias":
            nodes = self._alias_nodes(desc.get("nodes"))
        else:
            raise ApiError(400, f"Invalid experiment type: {exp_type!r} (physical or alias)")
        firmwares = self._associations(desc.get("firmwareassociations"), "firmwarename", nodes, desc)
        for fw in firmwares:
            if fw not in files:
                raise ApiError(400, f"Firmware file {fw!r} is missing from the submission")
            if not files[fw].startswith(b"\x7fELF") and not fw.endswith((".bin", ".hex")):
                raise ApiError(400, f"Firmware {fw!r} is not an ELF file")
        user = self.users[login]
        for profile in self._associations(desc.get("profileassociations"), "profilename", nodes, desc):
            if profile not in user.profiles:
                raise ApiError(500, f"Unknown monitoring profile: {profile}")
        if reservation is not None:
            self._check_free(nodes, float(reservation), float(reservation) + duration * 60, now)
        exp = Experiment(
            id=self._new_id(),
            user=login,
            name=name,
            type=str(exp_type),
            nodes=nodes,
            duration=duration,
            reservation=reservation,
            submitted=now,
            description={**desc, "nodes": nodes},
            files={k: v for k, v in files.items() if k in firmwares},
            since=now,
        )
        self.experiments[exp.id] = exp
        self.advance()
        return exp.id

    def _physical_nodes(self, nodes: Any) -> list[str]:
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
            raise ApiError(400, "Invalid nodes list: expected a non-empty list of network addresses")
        unknown = sorted(n for n in nodes if n not in self.nodes)
        if unknown:
            raise ApiError(500, f"Invalid nodes list : [{', '.join(unknown)}]")
        invalid = sorted(n for n in nodes if self.nodes[n].state not in ("Alive", "Busy"))
        if invalid:
            raise ApiError(500, f"Invalid nodes state : [{', '.join(invalid)}]")
        if len(set(nodes)) != len(nodes):
            raise ApiError(400, "Invalid nodes list: a node is given twice")
        return sorted(nodes, key=lambda a: (a.split("-", 1)[0], self.nodes[a].number))

    def _alias_nodes(self, aliases: Any) -> list[str]:
        if not isinstance(aliases, list) or not aliases:
            raise ApiError(400, "Invalid nodes list: expected a list of aliases")
        held = self.held_nodes()
        chosen: list[str] = []
        for alias in aliases:
            if not isinstance(alias, dict):
                raise ApiError(400, "Invalid alias")
            props = alias.get("properties") or {}
            count = alias.get("nbnodes")
            if not isinstance(count, int) or count < 1 or not isinstance(props, dict):
                raise ApiError(400, "Invalid alias: nbnodes and properties are required")
            pool = [
                n.address
                for n in self.nodes.values()
                if n.state == "Alive"
                and n.address not in held
                and n.address not in chosen
                and props.get("archi", n.archi) == n.archi
                and props.get("site", n.site) == n.site
            ]
            if len(pool) < count:
                raise ApiError(500, "There are not enough resources for your request")
            chosen.extend(pool[:count])
        return chosen

    @staticmethod
    def _associations(assocs: Any, key: str, nodes: list[str], desc: dict[str, Any]) -> list[str]:
        if assocs is None:
            return []
        if not isinstance(assocs, list):
            raise ApiError(400, f"Invalid {key} associations")
        names: list[str] = []
        alias_ids = {str(a.get("alias")) for a in desc.get("nodes") or [] if isinstance(a, dict)}
        for assoc in assocs:
            if not isinstance(assoc, dict) or not isinstance(assoc.get(key), str):
                raise ApiError(400, f"Invalid {key} association")
            targets = assoc.get("nodes")
            if not isinstance(targets, list) or not all(t in nodes or t in alias_ids for t in targets):
                raise ApiError(400, f"{key} {assoc[key]!r} is associated with nodes outside the experiment")
            if not FILE_NAME.fullmatch(assoc[key]):
                raise ApiError(400, f"Invalid {key}: {assoc[key]!r}")
            names.append(assoc[key])
        return names

    def _check_free(self, nodes: list[str], begin: float, end: float, now: float) -> None:
        for other in self.experiments.values():
            if other.state not in ACTIVE or not set(other.nodes) & set(nodes):
                continue
            o_begin, o_end = other.interval(now)
            if o_begin < end and begin < o_end:
                raise ApiError(500, "There are not enough resources for your request")

    def stop(self, login: str, exp_id: int) -> dict[str, Any]:
        self.advance()
        exp = self.owned(login, exp_id)
        now = self.clock()
        if exp.state in FINAL or exp.state == FINISHING:
            raise ApiError(500, f"Experiment {exp_id} is not active (state {exp.state})")
        if exp.state in (WAITING, TO_LAUNCH):
            self._enter(exp, STOPPED, now)
            exp.stop = now
        else:
            exp.end_state = STOPPED
            self._enter(exp, FINISHING, now)
        return {"id": exp_id, "status": "Delete request registered"}

    def reload(self, login: str, exp_id: int, duration: Any, reservation: Any) -> int:
        self.advance()
        old = self.owned(login, exp_id)
        desc = dict(old.description)
        try:
            if duration is not None:
                desc["duration"] = int(duration)
            desc["reservation"] = int(reservation) if reservation is not None else None
        except (TypeError, ValueError):
            raise ApiError(400, "Invalid duration or reservation: integers as strings expected") from None
        if desc.get("type") == "alias":
            # A reloaded alias experiment asks for nodes again rather than insisting on the old ones.
            desc["nodes"] = old.description.get("nodes")
        return self.submit(login, desc, dict(old.files))

    def node_command(self, login: str, exp_id: int, command: str, nodes: Any) -> dict[str, list[str]]:
        self.advance()
        exp = self.owned(login, exp_id)
        if exp.state != RUNNING:
            raise ApiError(500, f"Experiment {exp_id} is not running (state {exp.state})")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ApiError(400, "Expected a JSON list of nodes")
        targets = nodes or list(exp.nodes)
        outside = sorted(set(targets) - set(exp.nodes))
        if outside:
            raise ApiError(400, f"Nodes not in experiment {exp_id}: {', '.join(outside)}")
        del command  # every command succeeds on emulated nodes
        return {"0": list(targets)}

    def flash(
        self, login: str, exp_id: int, nodes: Any, firmware: str, content: bytes
    ) -> dict[str, list[str]]:
        result = self.node_command(login, exp_id, "flash", nodes)
        if not FILE_NAME.fullmatch(firmware):
            raise ApiError(400, f"Invalid firmware name {firmware!r}")
        self.experiments[exp_id].files[firmware] = content
        return result

    def archive(self, login: str, exp_id: int) -> bytes:
        self.advance()
        exp = self.owned(login, exp_id)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            members = {f"{exp.id}.json": json.dumps(exp.as_json(), indent=2).encode()}
            members.update(exp.files)
            for name, content in members.items():
                info = tarfile.TarInfo(f"{exp.id}/{name}")
                info.size = len(content)
                info.mtime = int(exp.submitted)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        return buf.getvalue()

    # ------------------------------------------------------------ profiles

    def add_profile(self, login: str, profile: Any) -> dict[str, Any]:
        if not isinstance(profile, dict) or not isinstance(profile.get("profilename"), str):
            raise ApiError(400, "A profile needs a profilename")
        if not PROFILE_NAME.fullmatch(profile["profilename"]):
            raise ApiError(400, "Invalid profile name: letters, digits, '_' and '-' only")
        if profile.get("nodearch") not in ("m3", "a8", "custom", "wsn430"):
            raise ApiError(400, "Invalid nodearch")
        self.users[login].profiles[profile["profilename"]] = dict(profile)
        return dict(profile)

    def profiles(self, login: str, archi: str | None) -> list[dict[str, Any]]:
        return [p for p in self.users[login].profiles.values() if archi is None or p.get("nodearch") == archi]

    # ------------------------------------------------------------ nodes

    def nodes_json(self, **selections: str) -> list[dict[str, Any]]:
        held = self.held_nodes()
        out = []
        for node in sorted(self.nodes.values(), key=lambda n: (n.archi, n.number)):
            item = node.as_json(busy=node.address in held)
            if all(str(item.get(k)) == v for k, v in selections.items()):
                out.append(item)
        return out
