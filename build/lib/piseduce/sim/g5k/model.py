"""The emulated site: nodes, OAR jobs and Kadeploy deployments, with their state progressions
(the records in records.py; Kadeploy in kadeploy.py; the jobs' and status' JSON in oar_items.py).

States are derived from timestamps on every read (no background task): a job is `waiting` until
its start, `launching` for a few seconds, `running` for its walltime, then `terminated` (or
`error` once a deletion has gone through). A deployment is `waiting`, `processing`, then
`terminated` with a per-node OK/KO result, or `error`. The wall clock is real (walltimes and
advance reservations are honoured as OAR does); only the durations of OAR's launch and Kadeploy's
work are divided by `time_scale`, so tests and demos run in seconds.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from piseduce.sim.g5k import kadeploy, oar_items, scheduling, site_items, walltime
from piseduce.sim.g5k.records import (
    FINAL_JOB_STATES,
    KILL_SECONDS,
    LAUNCH_SECONDS,
    Faults,
    SimDeployment,
    SimError,
    SimJob,
    SimNode,
)
from piseduce.sim.g5k.reference import (
    cluster_reference,
    environments,
    fqdn,
    node_reference,
    site_reference,
)


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
        self.cluster_refs: dict[str, dict[str, Any]] = {}
        for cname, count in clusters:
            self.cluster_refs[cname] = cluster_reference(site, cname, count)
            members = []
            for i in range(1, count + 1):
                ref = node_reference(site, cname, i)
                node = SimNode(ref["uid"], cname, fqdn(ref), ref)
                self.nodes[node.fqdn] = node
                members.append(node)
            self.clusters[cname] = members
        for name in dead:
            self.node(name).hard = "dead"
        self.jobs: dict[int, SimJob] = {}
        self.deployments: dict[str, SimDeployment] = {}
        self.files: dict[str, tuple[str, str]] = {}  # blobs of deployments: name → (owner, content)
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
        killed = job.killed_at()
        if killed is not None and t >= killed + self.kill:
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
        """Jobs (besteffort ones aside: they give way) holding one of `hosts` during [start, end)."""
        wanted = set(hosts)
        return [
            j for j in self.jobs.values()
            if j.uid != exclude and wanted.intersection(j.hosts) and j.queue != scheduling.BESTEFFORT
            and scheduling.holds(j, start, end, self.launch, self.kill)
        ]

    def submit_job(self, user: str, payload: dict[str, Any]) -> SimJob:
        with self.lock:
            now = self.now()
            known = set(next(iter(self.nodes.values())).oar_properties()) if self.nodes else set()
            try:
                req = scheduling.read_request(payload, known, now)
                pools = scheduling.candidates(self, req)
                start, alloc = scheduling.place(self, req, pools, now)
            except scheduling.AdmissionError as exc:
                raise SimError(400, self._oar_error(str(exc)) if exc.oar_rule else str(exc)) from None
            if req.reservation is not None:
                message = f"R=0,W={req.spec.walltime // 60},J=R,Q={req.queue} (Karma=0.000,quota_ok)"
            else:
                message = "FIFO scheduling OK"
            self._next_job += 1
            job = SimJob(
                uid=self._next_job,
                user=user,
                name=str(payload.get("name") or ""),
                command=req.command,
                types=req.types,
                properties=str(payload.get("properties") or ""),
                queue=req.queue,
                project=str(payload.get("project") or "default"),
                hosts=sorted(alloc),
                walltime=req.spec.walltime,
                submitted_at=now,
                start_at=start,
                reservation=req.reservation is not None,
                message=message,
                directory=str(payload.get("directory") or f"/home/{user}"),
                cores=dict(alloc),
            )
            self.jobs[job.uid] = job
            scheduling.preempt(self, job)
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
                cores={f: int(self.nodes[f].ref["architecture"]["nb_cores"]) for f in fqdns},
            )
            self.jobs[job.uid] = job
            scheduling.preempt(self, job)
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
            if job.deleted_at < job.start_at:
                # It never started: the besteffort jobs it would have killed keep running.
                for other in self.jobs.values():
                    if other.preempted_by == job.uid and other.preempted_at is not None \
                            and other.preempted_at > job.deleted_at:
                        other.preempted_at = other.preempted_by = None
            return job

    def job_item(self, job: SimJob, *, details: bool, with_events: bool = True) -> dict[str, Any]:
        return oar_items.job_item(self, job, details=details, with_events=with_events)

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
            walltime.settle(self)
            state = self.job_state(job)
            if state != "running" or job.killed_at() is not None:
                raise SimError(
                    403,
                    f"Walltime change for job {job.uid} is not possible: "
                    f"the job is not running (state {state})",
                )
            try:
                return walltime.change(self, job, payload)
            except ValueError as exc:
                raise SimError(400, str(exc)) from None
            except PermissionError as exc:
                raise SimError(403, str(exc)) from None

    def walltime_item(self, uid: int | str) -> dict[str, Any]:
        with self.lock:
            walltime.settle(self)
            return walltime.item(self, self.get_job(uid))

    # -- status

    def status(
        self, *, cluster: str | None = None, details: bool = True, waiting: bool = True
    ) -> dict[str, Any]:
        with self.lock:
            return oar_items.status(self, cluster=cluster, details=details, waiting=waiting)

    # -- deployments (Kadeploy: kadeploy.py)

    def submit_deployment(self, user: str, payload: dict[str, Any], files_uri: str) -> SimDeployment:
        with self.lock:
            return kadeploy.submit(self, user, payload, files_uri)

    def file(self, user: str, name: str) -> str:
        with self.lock:
            return kadeploy.stored_file(self, user, name)

    def deployment_status(self, dep: SimDeployment, now: float | None = None) -> str:
        return kadeploy.status(self, dep, self.now() if now is None else now)

    def get_deployment(self, uid: str) -> SimDeployment:
        return kadeploy.get(self, uid)

    def cancel_deployment(self, user: str, uid: str) -> None:
        with self.lock:
            kadeploy.cancel(self, user, uid)

    def deployment_item(self, dep: SimDeployment) -> dict[str, Any]:
        return kadeploy.item(self, dep)

    def list_deployments(self, params: dict[str, str]) -> list[SimDeployment]:
        with self.lock:
            return kadeploy.listing(self, params)

    # -- reference

    def site_item(self) -> dict[str, Any]:
        item = site_reference(self.site)
        item["frontend"] = f"f{self.site}.{self.site}.grid5000.fr"
        return item

    def cluster_item(self, name: str) -> dict[str, Any]:
        if name not in self.clusters:
            raise SimError(404, f"Couldn't find cluster {name}")
        return {**self.cluster_refs[name], "site": self.site}

    def reference_items(self, kind: str) -> list[dict[str, Any]]:
        """servers, pdus, network_equipments, vlans or versions of the site."""
        nodes = [n.ref for n in self.nodes.values()]
        site = self.site_item()
        makers = {
            "servers": lambda: site_items.servers(site),
            "pdus": lambda: site_items.pdus(nodes),
            "network_equipments": lambda: site_items.network_equipments(self.site, nodes),
            "vlans": lambda: site_items.vlans(site),
            "versions": lambda: site_items.versions(self.site),
        }
        return makers[kind]()

    def node_items(self, cluster: str) -> list[dict[str, Any]]:
        members = self.clusters.get(cluster)
        if members is None:
            raise SimError(404, f"Couldn't find cluster {cluster}")
        return [{**n.ref, "cluster": cluster, "site": self.site} for n in members]

    def environment_items(self, params: dict[str, str]) -> list[dict[str, Any]]:
        envs = list(self.environments)
        if params.get("name"):
            envs = [e for e in envs if e["name"] == params["name"]]
        if params.get("arch"):
            envs = [e for e in envs if e["arch"] == params["arch"]]
        return envs
