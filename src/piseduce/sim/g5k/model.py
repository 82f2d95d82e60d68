"""The emulated site: nodes, OAR jobs and Kadeploy deployments, with their state progressions.

States are derived from timestamps on every read (no background task): a job is `waiting` until
its start, `launching` for a few seconds, `running` for its walltime, then `terminated` (or
`error` once a deletion has gone through). A deployment is `waiting`, `processing`, then
`terminated` with a per-node OK/KO result, or `error`. The wall clock is real (walltimes and
advance reservations are honoured as OAR does); only the durations of OAR's launch and Kadeploy's
work are divided by `time_scale`, so tests and demos run in seconds.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from piseduce.sim.g5k import oar
from piseduce.sim.g5k.reference import GIB, cluster_spec, environments, node_reference

ACTIVE_JOB_STATES = ("waiting", "launching", "running")
FINAL_JOB_STATES = ("terminated", "error")

# Seconds at time scale 1, roughly what Grid'5000 takes.
LAUNCH_SECONDS = 8.0  # OAR: start of a deploy job (prologue) until `running`
KILL_SECONDS = 3.0  # OAR: oardel until the job is `error`
KADEPLOY_WAIT_SECONDS = 2.0
KADEPLOY_SECONDS = 240.0  # a whole Kadeploy run (reboot, image, reboot)

KO_STEP = {"macro": "SetDeploymentEnvUntrusted", "micro": "wait_reboot", "state": "KO"}


class SimError(Exception):
    """An API error: HTTP status and the text the real API would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Faults:
    ko_rate: float = 0.0  # probability that a node of a deployment ends KO
    ko_nodes: set[str] = field(default_factory=set)  # nodes (uid or FQDN) that always end KO
    error_rate: float = 0.0  # probability that an API request answers 503
    fail_next: int = 0  # the next N API requests answer 503
    drop_next: int = 0  # the next N API requests are processed, but their answer is lost (502)
    latency: float = 0.0  # seconds added to every API request
    deploy_error: str = ""  # when set, deployments end in `error` with this output

    def as_dict(self) -> dict[str, Any]:
        return {
            "ko_rate": self.ko_rate,
            "ko_nodes": sorted(self.ko_nodes),
            "error_rate": self.error_rate,
            "fail_next": self.fail_next,
            "drop_next": self.drop_next,
            "latency": self.latency,
            "deploy_error": self.deploy_error,
        }

    def update(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if key == "ko_nodes":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise SimError(400, "ko_nodes must be a list of node names")
                self.ko_nodes = set(value)
            elif key in ("ko_rate", "error_rate"):
                v = float(value)
                if not 0 <= v <= 1:
                    raise SimError(400, f"{key} must be between 0 and 1")
                setattr(self, key, v)
            elif key == "latency":
                v = float(value)
                if not 0 <= v <= 60:
                    raise SimError(400, "latency must be between 0 and 60 seconds")
                self.latency = v
            elif key in ("fail_next", "drop_next"):
                n = int(value)
                if n < 0:
                    raise SimError(400, f"{key} must be >= 0")
                setattr(self, key, n)
            elif key == "deploy_error":
                self.deploy_error = str(value or "")
            else:
                raise SimError(400, f"unknown fault {key!r}")


@dataclass
class SimNode:
    uid: str
    cluster: str
    fqdn: str
    ref: dict[str, Any]
    hard: str = "alive"

    def oar_properties(self) -> dict[str, object]:
        arch = self.ref["architecture"]
        jt = self.ref["supported_job_types"]
        return {
            "host": self.fqdn,
            "network_address": self.fqdn,
            "cluster": self.cluster,
            "type": "default",
            "deploy": "YES" if jt.get("deploy") else "NO",
            "cpucore": float(arch["nb_cores"]),
            "core_count": float(arch["nb_cores"]),
            "thread_count": float(arch["nb_threads"]),
            "memnode": float(self.ref["main_memory"]["ram_size"] // (1024 * 1024)),
            "cputype": self.ref["processor"]["model"],
            "nodemodel": self.ref["chassis"]["name"],
            "besteffort": "YES" if jt.get("besteffort") else "NO",
            "state": self.hard.capitalize(),
        }


@dataclass
class SimJob:
    uid: int
    user: str
    name: str
    command: str
    types: list[str]
    properties: str
    queue: str
    project: str
    hosts: list[str]
    walltime: int
    submitted_at: float
    start_at: float  # when OAR starts it (the prediction, exact for a reservation)
    reservation: bool
    message: str
    directory: str = ""
    deleted_at: float | None = None
    granted: int = 0  # seconds granted by walltime changes

    def launched_at(self, launch: float) -> float:
        return self.start_at + launch

    def natural_end(self, launch: float) -> float:
        return self.start_at + launch + self.walltime

    def stop_at(self, launch: float, kill: float) -> float:
        end = self.natural_end(launch)
        if self.deleted_at is not None:
            end = min(end, self.deleted_at + kill)
        return end


@dataclass
class SimDeployment:
    uid: str
    user: str
    nodes: list[str]
    environment: str
    key: str | None
    created_at: float
    ko: set[str]
    error: str
    params: dict[str, Any]
    canceled_at: float | None = None


class G5kSim:
    """One Grid'5000 site: thread-safe, every public method takes the lock."""

    def __init__(
        self,
        site: str = "nancy",
        clusters: Iterable[tuple[str, int]] = (("grisou", 4), ("gros", 4)),
        users: dict[str, str] | None = None,
        *,
        time_scale: float = 1.0,
        faults: Faults | None = None,
        dead: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.site = site
        self.users = dict(users or {})
        self.time_scale = time_scale
        self.faults = faults or Faults()
        self.clock = clock
        self.random = random.Random(seed)
        self.lock = threading.RLock()
        self.nodes: dict[str, SimNode] = {}
        self.clusters: dict[str, list[SimNode]] = {}
        for cname, count in clusters:
            spec = cluster_spec(cname)
            members = []
            for i in range(1, count + 1):
                ref = node_reference(site, cname, i, spec)
                node = SimNode(ref["uid"], cname, ref["network_adapters"][0]["network_address"], ref)
                self.nodes[node.fqdn] = node
                members.append(node)
            self.clusters[cname] = members
        for name in dead:
            self.node(name).hard = "dead"
        self.jobs: dict[int, SimJob] = {}
        self.deployments: dict[str, SimDeployment] = {}
        self.environments = environments()
        self._next_job = 4_200_000

    # -- time

    @property
    def launch(self) -> float:
        return LAUNCH_SECONDS / self.time_scale

    @property
    def kill(self) -> float:
        return KILL_SECONDS / self.time_scale

    def now(self) -> float:
        return self.clock()

    # -- auth and faults

    def authenticate(self, user: str, password: str) -> bool:
        import hmac

        expected = self.users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def injected_failure(self) -> bool:
        """Whether this API request must answer 503 (the fault knobs)."""
        with self.lock:
            if self.faults.fail_next > 0:
                self.faults.fail_next -= 1
                return True
            return self.faults.error_rate > 0 and self.random.random() < self.faults.error_rate

    def answer_lost(self) -> bool:
        """Whether this API request is processed but its answer replaced by a 502 (a proxy that
        gave up while the backend worked)."""
        with self.lock:
            if self.faults.drop_next > 0:
                self.faults.drop_next -= 1
                return True
            return False

    # -- nodes

    def node(self, name: str) -> SimNode:
        for n in self.nodes.values():
            if name in (n.uid, n.fqdn):
                return n
        raise SimError(404, f"Couldn't find node {name}")

    def set_node_hard(self, name: str, hard: str) -> None:
        if hard not in ("alive", "dead", "absent", "suspected", "standby"):
            raise SimError(400, f"bad hard state {hard!r}")
        with self.lock:
            self.node(name).hard = hard

    # -- jobs

    def job_state(self, job: SimJob, now: float | None = None) -> str:
        t = self.now() if now is None else now
        if job.deleted_at is not None and t >= job.deleted_at + self.kill:
            return "error"
        if t < job.start_at:
            return "waiting"
        if t < job.launched_at(self.launch):
            return "launching"
        if t < job.natural_end(self.launch):
            return "running"
        return "terminated"

    def _busy(
        self, hosts: Iterable[str], start: float, end: float, exclude: int | None = None
    ) -> list[SimJob]:
        """Active jobs holding one of `hosts` during [start, end)."""
        wanted = set(hosts)
        out = []
        for job in self.jobs.values():
            if job.uid == exclude or not wanted.intersection(job.hosts):
                continue
            j_end = job.stop_at(self.launch, self.kill)
            if job.start_at < end and start < j_end:
                out.append(job)
        return out

    def _pick(self, candidates: list[SimNode], count: int | None, start: float, end: float) -> list[SimNode]:
        free = [n for n in candidates if not self._busy([n.fqdn], start, end)]
        if count is None:
            return free if len(free) == len(candidates) and free else []
        return free[:count] if len(free) >= count else []

    def submit_job(self, user: str, payload: dict[str, Any]) -> SimJob:
        with self.lock:
            now = self.now()
            command = payload.get("command")
            reservation = payload.get("reservation")
            if reservation is not None and not isinstance(reservation, str):
                raise SimError(
                    400, "The job you are trying to submit is not valid: reservation must be a String"
                )
            if not command and reservation is None:
                raise SimError(400, "The job you are trying to submit is not valid: you must give a :command")
            types = payload.get("types") or []
            if isinstance(types, str):
                types = [types]
            if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
                raise SimError(
                    400, "The job you are trying to submit is not valid: types must be a list of strings"
                )
            queue = str(payload.get("queue") or "default")
            try:
                req = oar.parse_resources(payload.get("resources"))
                known = set(next(iter(self.nodes.values())).oar_properties()) if self.nodes else set()
                prop_text = str(payload.get("properties") or "")
                props = oar.parse_properties(prop_text, known)
                rfilter = oar.parse_properties(req.filter, known)
                start = oar.parse_reservation(reservation, now) if reservation is not None else now
            except oar.OarSyntaxError as exc:
                raise SimError(400, self._oar_error(f"oarsub: {exc}")) from None
            if reservation is not None and start < now - 60:
                raise SimError(
                    400, self._oar_error("[ADMISSION RULE] Error: the reservation date is in the past")
                )
            if queue == "admin":
                raise SimError(
                    400, self._oar_error(f"[ADMISSION RULE] Only administrators can use the {queue} queue")
                )
            candidates = [
                n
                for n in self.nodes.values()
                if n.hard == "alive"
                and queue in n.ref["supported_job_types"]["queues"]
                and ("deploy" not in types or n.ref["supported_job_types"]["deploy"])
                and props(n.oar_properties())
                and rfilter(n.oar_properties())
            ]
            if not candidates or (req.nodes is not None and len(candidates) < req.nodes):
                raise SimError(
                    400,
                    self._oar_error(
                        "There are not enough resources for your request "
                        f"({req.nodes or 'ALL'} node(s) asked, {len(candidates)} match the properties)"
                    ),
                )
            duration = self.launch + req.walltime
            if reservation is not None:
                chosen = self._pick(candidates, req.nodes, start, start + duration)
                if not chosen:
                    busy = self._busy([n.fqdn for n in candidates], start, start + duration)
                    detail = "; ".join(
                        f"{','.join(sorted(set(j.hosts) & {n.fqdn for n in candidates}))} held by job {j.uid}"
                        for j in busy[:3]
                    )
                    raise SimError(
                        400,
                        self._oar_error(
                            f"# Reservation not valid --> REJECTED: the resources are busy ({detail})"
                        ),
                    )
                message = f"R=0,W={req.walltime // 60},J=R,Q={queue} (Karma=0.000,quota_ok)"
            else:
                times = sorted(
                    {now}
                    | {
                        j.stop_at(self.launch, self.kill)
                        for j in self.jobs.values()
                        if j.stop_at(self.launch, self.kill) > now
                    }
                )
                chosen = []
                for t in times:
                    chosen = self._pick(candidates, req.nodes, t, t + duration)
                    if chosen:
                        start = t
                        break
                message = "FIFO scheduling OK"
            self._next_job += 1
            job = SimJob(
                uid=self._next_job,
                user=user,
                name=str(payload.get("name") or ""),
                command=str(command or ""),
                types=list(types),
                properties=str(payload.get("properties") or ""),
                queue=queue,
                project=str(payload.get("project") or "default"),
                hosts=sorted(n.fqdn for n in chosen),
                walltime=req.walltime,
                submitted_at=now,
                start_at=start,
                reservation=reservation is not None,
                message=message,
                directory=str(payload.get("directory") or f"/home/{user}"),
            )
            self.jobs[job.uid] = job
            return job

    def _oar_error(self, text: str) -> str:
        # The real API wraps OAR's answer in the text of its proxy error.
        return (
            f"Request to https://api-proxy.{self.site}.grid5000.fr/internal/oarapi/jobs.json "
            f"failed with status 400: {text}"
        )

    def get_job(self, uid: int | str) -> SimJob:
        try:
            job = self.jobs.get(int(uid))
        except (TypeError, ValueError):
            job = None
        if job is None:
            raise SimError(404, f"Couldn't find OAR::Job with 'job_id'={uid}")
        return job

    def add_foreign_job(
        self, user: str, hosts: list[str], start: float | None, walltime: int, name: str
    ) -> SimJob:
        """A job submitted outside the API (oarsub on a frontend): no admission, no checks."""
        with self.lock:
            fqdns = [self.node(h).fqdn for h in hosts]
            now = self.now()
            self._next_job += 1
            job = SimJob(
                uid=self._next_job,
                user=user,
                name=name,
                command="sleep infinity",
                types=[],
                properties="",
                queue="default",
                project="default",
                hosts=sorted(fqdns),
                walltime=walltime,
                submitted_at=now,
                start_at=now if start is None else start,
                reservation=start is not None,
                message="FIFO scheduling OK",
                directory=f"/home/{user}",
            )
            self.jobs[job.uid] = job
            return job

    def delete_job(self, user: str, uid: int | str) -> SimJob:
        with self.lock:
            job = self.get_job(uid)
            if job.user != user:
                raise SimError(403, "You are not authorized to access this resource")
            state = self.job_state(job)
            if job.deleted_at is not None or state in FINAL_JOB_STATES:
                raise SimError(
                    400,
                    f"Request to https://api-proxy.{self.site}.grid5000.fr/internal/oarapi/jobs/"
                    f"{job.uid}.json "
                    f"failed with status 400: This job was already killed",
                )
            job.deleted_at = self.now()
            return job

    def job_item(self, job: SimJob, *, details: bool, with_events: bool = True) -> dict[str, Any]:
        now = self.now()
        state = self.job_state(job, now)
        started = state in ("running", "terminated") or (
            state == "error" and job.deleted_at is not None and job.deleted_at > job.launched_at(self.launch)
        )
        item: dict[str, Any] = {
            "uid": job.uid,
            "user_uid": job.user,
            "user": job.user,
            "walltime": job.walltime,
            "queue": job.queue,
            "state": state,
            "project": job.project,
            "name": job.name,
            "types": list(job.types),
            "mode": "PASSIVE",
            "command": job.command,
            "submitted_at": int(job.submitted_at),
            "scheduled_at": int(job.start_at),
            "started_at": int(job.launched_at(self.launch)) if started else 0,
            "message": job.message,
            "properties": job.properties,
            "directory": job.directory,
        }
        if state in FINAL_JOB_STATES:
            item["stopped_at"] = int(job.stop_at(self.launch, self.kill))
            item["exit_code"] = 0 if state == "terminated" else 2
        if with_events:
            events = []
            if job.deleted_at is not None:
                events.append(
                    {
                        "uid": job.uid * 10 + 1,
                        "created_at": int(job.deleted_at),
                        "type": "FRAG_JOB_REQUEST",
                        "description": f"User {job.user} requested to frag the job {job.uid}",
                    }
                )
            if state == "terminated" and job.deleted_at is None:
                events.append(
                    {
                        "uid": job.uid * 10 + 2,
                        "created_at": int(job.natural_end(self.launch)),
                        "type": "WALLTIME",
                        "description": f"[sarko] Job [{job.uid}] from {int(job.start_at)} "
                        f"with {job.walltime}; current time={int(job.natural_end(self.launch))} (Elapsed)",
                    }
                )
            item["events"] = events
        if details:
            cores: list[str] = []
            for h in job.hosts:
                cores.extend([h] * int(self.nodes[h].ref["architecture"]["nb_cores"]))
            item["resources_by_type"] = {"cores": cores}
            item["assigned_nodes"] = list(job.hosts)
        return item

    def list_jobs(self, params: dict[str, str]) -> list[SimJob]:
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: (j.submitted_at, j.uid), reverse=True)
            if params.get("user"):
                jobs = [j for j in jobs if j.user == params["user"]]
            if params.get("name"):
                jobs = [j for j in jobs if j.name == params["name"]]
            if params.get("project"):
                jobs = [j for j in jobs if j.project == params["project"]]
            if params.get("queue"):
                jobs = [j for j in jobs if j.queue == params["queue"]]
            if params.get("state"):
                wanted = {s.strip().lower() for s in params["state"].split(",") if s.strip()}
                now = self.now()
                jobs = [j for j in jobs if self.job_state(j, now) in wanted]
            return jobs

    # -- walltime changes (oarwalltime)

    def change_walltime(self, user: str, uid: int | str, payload: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            job = self.get_job(uid)
            if job.user != user:
                raise SimError(403, "You are not authorized to access this resource")
            raw = payload.get("walltime")
            if raw is None or raw == "":
                raise SimError(
                    400,
                    "The job walltime change you are trying to submit is not valid: walltime can't be blank",
                )
            try:
                sign, seconds = oar.parse_walltime_delta(raw)
            except oar.OarSyntaxError as exc:
                raise SimError(
                    400, f"The job walltime change you are trying to submit is not valid: {exc}"
                ) from None
            state = self.job_state(job)
            if state != "running" or job.deleted_at is not None:
                raise SimError(
                    403,
                    f"Walltime change for job {job.uid} is not possible: "
                    f"the job is not running (state {state})",
                )
            new = (
                job.walltime + seconds if sign == "+" else job.walltime - seconds if sign == "-" else seconds
            )
            elapsed = self.now() - job.launched_at(self.launch)
            if new <= elapsed + 60:
                raise SimError(
                    403, f"Walltime change for job {job.uid} is not possible: the new walltime is too short"
                )
            if new > job.walltime:
                old_end = job.natural_end(self.launch)
                new_end = job.start_at + self.launch + new
                blocking = self._busy(job.hosts, old_end, new_end, exclude=job.uid)
                if blocking and not payload.get("force"):
                    other = blocking[0]
                    raise SimError(
                        403,
                        f"Walltime change for job {job.uid} cannot be granted: the extra time overlaps job "
                        f"{other.uid} of {other.user} on "
                        f"{', '.join(sorted(set(other.hosts) & set(job.hosts)))}",
                    )
            delta = new - job.walltime
            job.granted += delta
            job.walltime = new
            sign_txt = "+" if delta >= 0 else "-"
            return {
                "status": "Accepted",
                "walltime": f"{sign_txt}{oar.format_walltime(abs(delta))}",
                "cmd_output": f"Accepted: walltime change request updated for job {job.uid}, "
                "it will be handled shortly.\n",
                "api_timestamp": int(self.now()),
            }

    def walltime_item(self, uid: int | str) -> dict[str, Any]:
        with self.lock:
            job = self.get_job(uid)
            return {
                "uid": job.uid,
                "walltime": oar.format_walltime(job.walltime),
                "possible": "UNLIMITED",
                "pending": "+0:0:0",
                "granted": ("+" if job.granted >= 0 else "-") + oar.format_walltime(abs(job.granted)),
                "force": "NO",
                "delay_next_jobs": "NO",
                "whole": "NO",
                "timeout": "UNLIMITED",
                "api_timestamp": int(self.now()),
            }

    # -- status

    def status(
        self, *, cluster: str | None = None, details: bool = True, waiting: bool = True
    ) -> dict[str, Any]:
        with self.lock:
            now = self.now()
            nodes = self.clusters.get(cluster, []) if cluster else list(self.nodes.values())
            out: dict[str, Any] = {}
            for n in nodes:
                jobs = [
                    j
                    for j in self.jobs.values()
                    if n.fqdn in j.hosts
                    and self.job_state(j, now) in ACTIVE_JOB_STATES
                    and (waiting or self.job_state(j, now) != "waiting")
                ]
                cores = int(n.ref["architecture"]["nb_cores"])
                running = any(self.job_state(j, now) == "running" for j in jobs)
                besteffort = any(
                    j.queue == "besteffort" and self.job_state(j, now) == "running" for j in jobs
                )
                soft = "unknown" if n.hard == "dead" else "free"
                if running and n.hard != "dead":
                    soft = "busy_besteffort" if besteffort else "busy"
                entry: dict[str, Any] = {"hard": n.hard, "soft": soft, "comment": ""}
                if soft == "unknown":
                    entry.update(free_slots=0, freeable_slots=0, busy_slots=0)
                else:
                    busy = cores if running else 0
                    entry.update(
                        free_slots=cores - busy,
                        freeable_slots=busy if besteffort else 0,
                        busy_slots=0 if besteffort else busy,
                    )
                if details:
                    entry["reservations"] = [self.job_item(j, details=False, with_events=False) for j in jobs]
                out[n.fqdn] = entry
            result: dict[str, Any] = {"uid": int(now), "nodes": out, "disks": {}}
            if cluster is None:
                result["vlans"] = {}
                result["subnets"] = {}
            return result

    # -- deployments (Kadeploy)

    def _env(self, name: str) -> dict[str, Any] | None:
        base = name.split("@")[0]
        for env in self.environments:
            if base in (env["name"], env["alias"], env["uid"]):
                return env
        return None

    def submit_deployment(self, user: str, payload: dict[str, Any], files_uri: str) -> SimDeployment:
        with self.lock:
            now = self.now()
            nodes = payload.get("nodes")
            if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
                raise SimError(
                    400,
                    "The deployment you are trying to submit is not valid: "
                    "nodes must be a non-empty list of node FQDN",
                )
            environment = payload.get("environment")
            if not isinstance(environment, str) or not environment:
                raise SimError(
                    400, "The deployment you are trying to submit is not valid: environment can't be blank"
                )
            unknown = [n for n in nodes if n not in self.nodes]
            if unknown:
                raise SimError(
                    500, f"Cannot launch deployment: Kadeploy error #4: unknown node(s) {', '.join(unknown)}"
                )
            if not environment.startswith(("http://", "https://")) and self._env(environment) is None:
                raise SimError(
                    500,
                    f"Cannot launch deployment: Kadeploy error #21: "
                    f"the environment '{environment}' does not exist",
                )
            allowed: set[str] = set()
            for job in self.jobs.values():
                if (
                    job.user == user
                    and "deploy" in job.types
                    and self.job_state(job, now) == "running"
                    and job.deleted_at is None
                ):
                    allowed.update(job.hosts)
            denied = [n for n in nodes if n not in allowed]
            if denied:
                raise SimError(
                    500,
                    "Cannot launch deployment: Kadeploy error #6: you do not have the deployment rights on "
                    f"{', '.join(denied)} (a running job of type deploy is required)",
                )
            if not payload.get("ignore_nodes_deploying"):
                for d in self.deployments.values():
                    if d.user == user and self.deployment_status(d, now) in ("waiting", "processing"):
                        clash = set(d.nodes) & set(nodes)
                        if clash:
                            raise SimError(
                                500,
                                f"Cannot launch deployment: Kadeploy error #9: {', '.join(sorted(clash))} "
                                f"already being deployed by {d.uid}",
                            )
            key = payload.get("key")
            if isinstance(key, str) and key and not key.startswith(("http://", "https://")):
                # The real API stores key blobs as files and gives their URI back.
                key = f"{files_uri}/{user}-key-{hashlib.sha1(key.encode()).hexdigest()}"  # noqa: S324 (a name)
            ko = {
                n
                for n in nodes
                if n in self.faults.ko_nodes
                or self.nodes[n].uid in self.faults.ko_nodes
                or (self.faults.ko_rate > 0 and self.random.random() < self.faults.ko_rate)
            }
            dep = SimDeployment(
                uid=f"D-{uuid.uuid4()}",
                user=user,
                nodes=list(nodes),
                environment=environment,
                key=key if isinstance(key, str) else None,
                created_at=now,
                ko=ko,
                error=self.faults.deploy_error,
                params={k: payload[k] for k in ("version", "arch", "vlan") if k in payload},
            )
            self.deployments[dep.uid] = dep
            return dep

    def deployment_status(self, dep: SimDeployment, now: float | None = None) -> str:
        t = self.now() if now is None else now
        if dep.canceled_at is not None:
            return "canceled"
        wait = KADEPLOY_WAIT_SECONDS / self.time_scale
        if t < dep.created_at + wait:
            return "waiting"
        if t < dep.created_at + wait + KADEPLOY_SECONDS / self.time_scale:
            return "processing"
        return "error" if dep.error else "terminated"

    def get_deployment(self, uid: str) -> SimDeployment:
        dep = self.deployments.get(uid)
        if dep is None:
            raise SimError(404, f"Couldn't find Grid5000::Deployment with ID={uid}")
        return dep

    def cancel_deployment(self, user: str, uid: str) -> None:
        with self.lock:
            dep = self.get_deployment(uid)
            if dep.user != user:
                raise SimError(403, "You are not authorized to access this resource")
            if self.deployment_status(dep) in ("waiting", "processing"):
                dep.canceled_at = self.now()

    def deployment_item(self, dep: SimDeployment) -> dict[str, Any]:
        now = self.now()
        status = self.deployment_status(dep, now)
        result: dict[str, Any] = {}
        if status == "terminated":
            for n in dep.nodes:
                result[n] = dict(KO_STEP) if n in dep.ko else {"macro": None, "micro": None, "state": "OK"}
        elif status == "error":
            result = {n: dict(KO_STEP) for n in dep.nodes}
        updated = (
            now
            if status in ("waiting", "processing")
            else (
                dep.canceled_at
                or dep.created_at + (KADEPLOY_WAIT_SECONDS + KADEPLOY_SECONDS) / self.time_scale
            )
        )
        item: dict[str, Any] = {
            "uid": dep.uid,
            "site_uid": self.site,
            "user_uid": dep.user,
            "environment": dep.environment,
            "status": status,
            "nodes": list(dep.nodes),
            "result": result,
            "created_at": int(dep.created_at),
            "updated_at": int(updated),
            **dep.params,
        }
        if dep.key:
            item["key"] = dep.key
        if status == "error":
            item["output"] = f"Kadeploy error #1: {dep.error}"
        return item

    def list_deployments(self, params: dict[str, str]) -> list[SimDeployment]:
        with self.lock:
            deps = sorted(
                self.deployments.values(), key=lambda d: d.created_at, reverse=params.get("reverse") != "true"
            )
            if params.get("user"):
                deps = [d for d in deps if d.user == params["user"]]
            if params.get("status"):
                now = self.now()
                deps = [d for d in deps if self.deployment_status(d, now) == params["status"]]
            return deps

    # -- reference

    def site_item(self) -> dict[str, Any]:
        return {
            "uid": self.site,
            "type": "site",
            "name": self.site.capitalize(),
            "description": f"Grid'5000 {self.site.capitalize()} site (PiSeduce emulator)",
            "location": "France",
            "email_contact": f"{self.site}-staff@lists.grid5000.fr",
            "frontend": f"f{self.site}.{self.site}.grid5000.fr",
            "compilation_server": False,
            "production": True,
        }

    def cluster_item(self, name: str) -> dict[str, Any]:
        members = self.clusters.get(name)
        if members is None:
            raise SimError(404, f"Couldn't find cluster {name}")
        spec = cluster_spec(name)
        return {
            "uid": name,
            "type": "cluster",
            "model": spec.model,
            "created_at": "Tue, 01 Jan 2019 00:00:00 GMT",
            "kavlan": True,
            "queues": list(spec.queues),
            "exotic": False,
            "nodes_count": len(members),
            "memory_gib": spec.ram_gib,
            "ram_size": spec.ram_gib * GIB,
        }

    def node_items(self, cluster: str) -> list[dict[str, Any]]:
        members = self.clusters.get(cluster)
        if members is None:
            raise SimError(404, f"Couldn't find cluster {cluster}")
        return [dict(n.ref) for n in members]

    def environment_items(self, params: dict[str, str]) -> list[dict[str, Any]]:
        envs = list(self.environments)
        if params.get("name"):
            envs = [e for e in envs if e["name"] == params["name"]]
        if params.get("arch"):
            envs = [e for e in envs if e["arch"] == params["arch"]]
        return envs
