"""The state of one emulated FIT IoT-LAB site, in memory: nodes, users with their monitoring profiles,
and experiments that follow the OAR-like states of the real testbed.

States are computed lazily: every request first calls `Site.advance()`, which moves each experiment
along Waiting → toLaunch → Launching → Running → Finishing → Terminated/Stopped (or Error) according to
the clock. Transition delays are divided by the time scale; an experiment's duration is not, because
it is what the user booked and PiSeduce's calendar runs on real time. The records are in
records.py; a submission is read by submission.py.
"""

from __future__ import annotations

import hmac
import io
import json
import random
import tarfile
import time
from collections.abc import Callable
from typing import Any

from piseduce.sim.iotlab import submission
from piseduce.sim.iotlab.consumption import file_name, oml_text
from piseduce.sim.iotlab.extras import (
    Robot,
    Scripts,
    archi_matches,
    description_of,
)
from piseduce.sim.iotlab.records import (
    ERROR,
    FILE_NAME,
    FINAL,
    FINISHING,
    HOLDING,
    LAUNCHING,
    PROFILE_NAME,
    RUNNING,
    STOPPED,
    TERMINATED,
    TO_LAUNCH,
    WAITING,
    ApiError,
    Experiment,
    Faults,
    Node,
    Timing,
    User,
)


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
        self.scripts: dict[int, Scripts] = {}
        self.robots: dict[str, Robot] = {}  # node address → the robot carrying it
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
                self._monitor_from_start(exp, t)
                scripts = self.scripts.setdefault(exp.id, Scripts(self.name))
                scripts.start_from(exp.description.get("siteassociations"))
            return True
        if exp.state == RUNNING:
            assert exp.start is not None
            t = exp.start + exp.duration * 60
            if now < t:
                return False
            exp.end_state = TERMINATED
            self._enter(exp, FINISHING, t)
            exp.monitoring.close(t)
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
        now = self.clock()
        sub = submission.read(self, login, desc, files, now)
        exp = Experiment(
            id=self._new_id(),
            user=login,
            name=sub.name,
            type=sub.type,
            nodes=sub.nodes,
            duration=sub.duration,
            reservation=sub.reservation,
            submitted=now,
            description={**desc, "nodes": sub.nodes},
            files={k: v for k, v in files.items() if k in sub.kept_files},
            since=now,
        )
        self.experiments[exp.id] = exp
        self.advance()
        return exp.id

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
            exp.monitoring.close(now)
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
            # The description as submitted: `iotlab-experiment load` submits this file again.
            members = {f"{exp.id}.json": json.dumps(description_of(exp.description), indent=2).encode()}
            members.update(exp.files)
            for name, content in members.items():
                info = tarfile.TarInfo(f"{exp.id}/{name}")
                info.size = len(content)
                info.mtime = int(exp.submitted)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        return buf.getvalue()

    # ------------------------------------------------------------ profiles

    def _monitor_from_start(self, exp: Experiment, t: float) -> None:
        """The profiles associated at submission measure from the experiment's start."""
        profiles = self.users[exp.user].profiles if exp.user in self.users else {}
        for assoc in exp.description.get("profileassociations") or []:
            if isinstance(assoc, dict) and assoc.get("profilename") in profiles:
                nodes = [n for n in assoc.get("nodes") or [] if n in exp.nodes]
                exp.monitoring.apply(nodes, profiles[assoc["profilename"]], t)

    def set_monitoring(
        self, login: str, exp_id: int, nodes: Any, profile: dict[str, Any] | None
    ) -> dict[str, list[str]]:
        """A profile set on running nodes (None: `profile-reset`), measuring from now."""
        result = self.node_command(login, exp_id, "monitoring", nodes)
        self.experiments[exp_id].monitoring.apply(result["0"], profile, self.clock())
        return result

    def consumption_files(self, login: str) -> dict[str, str]:
        """The user's consumption files as the site's frontend holds them in their home:
        `.iot-lab/<exp_id>/consumption/<node>.oml` → OML text, for every experiment of theirs
        whose nodes measured something."""
        now = self.clock()
        out: dict[str, str] = {}
        for exp in list(self.experiments.values()):
            if exp.user != login:
                continue
            # The state is advanced lazily: an experiment past its end measured until its end.
            until = now if exp.start is None else min(now, exp.start + exp.duration * 60)
            for node in exp.monitoring.nodes():
                runs = list(exp.monitoring.segments[node])
                out[f".iot-lab/{exp.id}/consumption/{file_name(node)}"] = oml_text(exp.id, node, runs, until)
        return out

    def add_profile(self, login: str, profile: Any) -> dict[str, Any]:
        self.check_profile(profile)
        self.users[login].profiles[profile["profilename"]] = dict(profile)
        return dict(profile)

    @staticmethod
    def check_profile(profile: Any) -> None:
        if not isinstance(profile, dict) or not isinstance(profile.get("profilename"), str):
            raise ApiError(400, "A profile needs a profilename")
        if not PROFILE_NAME.fullmatch(profile["profilename"]):
            raise ApiError(400, "Invalid profile name: letters, digits, '_' and '-' only")
        if profile.get("nodearch") not in ("m3", "a8", "custom", "wsn430"):
            raise ApiError(400, "Invalid nodearch")

    def profiles(self, login: str, archi: str | None) -> list[dict[str, Any]]:
        return [p for p in self.users[login].profiles.values() if archi is None or p.get("nodearch") == archi]

    # ------------------------------------------------------------ nodes

    def nodes_json(self, **selections: str) -> list[dict[str, Any]]:
        held = self.held_nodes()
        out = []
        for node in sorted(self.nodes.values(), key=lambda n: (n.archi, n.number)):
            item = node.as_json(busy=node.address in held)
            if all(
                archi_matches(item["archi"], v) if k == "archi" else str(item.get(k)) == v
                for k, v in selections.items()
            ):
                out.append(item)
        return out
