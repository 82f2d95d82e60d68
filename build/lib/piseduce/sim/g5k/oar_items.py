"""What the API serves of OAR: a job's item (with its events: a deletion, a besteffort kill, the
walltime's end) and a site's or cluster's status (each node's soft state and slots, and the jobs
that hold it). The caller (`G5kSim`) holds the site's lock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piseduce.sim.g5k import walltime
from piseduce.sim.g5k.records import ACTIVE_JOB_STATES, FINAL_JOB_STATES, SimJob, SimNode

if TYPE_CHECKING:
    from piseduce.sim.g5k.model import G5kSim


def _events(sim: G5kSim, job: SimJob, state: str) -> list[dict[str, Any]]:
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
    if job.preempted_at is not None and state == "error":
        events.append(
            {
                "uid": job.uid * 10 + 3,
                "created_at": int(job.preempted_at),
                "type": "BESTEFFORT_KILL",
                "description": f"[bipbip {job.uid}] kill job: besteffort job killed for job "
                f"{job.preempted_by}, which needs its resources",
            }
        )
    if state == "terminated" and job.killed_at() is None:
        end = int(job.natural_end(sim.launch))
        events.append(
            {
                "uid": job.uid * 10 + 2,
                "created_at": end,
                "type": "WALLTIME",
                "description": f"[sarko] Job [{job.uid}] from {int(job.start_at)} "
                f"with {job.walltime}; current time={end} (Elapsed)",
            }
        )
    return events


def job_item(sim: G5kSim, job: SimJob, *, details: bool, with_events: bool = True) -> dict[str, Any]:
    walltime.settle(sim)
    now = sim.now()
    state = sim.job_state(job, now)
    started = state in ("running", "terminated") or (
        state == "error" and (job.killed_at() or 0) > job.launched_at(sim.launch)
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
        "started_at": int(job.launched_at(sim.launch)) if started else 0,
        "message": job.message,
        "properties": job.properties,
        "directory": job.directory,
    }
    if state in FINAL_JOB_STATES:
        item["stopped_at"] = int(job.stop_at(sim.launch, sim.kill))
        item["exit_code"] = 0 if state == "terminated" else 2
    if with_events:
        item["events"] = _events(sim, job, state)
    if details:
        cores = [f"{h}/{i}" for h in job.hosts for i in range(job.cores.get(h, 0))]
        item["resources_by_type"] = {"cores": cores}
        item["assigned_nodes"] = list(job.hosts)
    return item


def status(sim: G5kSim, *, cluster: str | None, details: bool, waiting: bool) -> dict[str, Any]:
    now = sim.now()
    nodes = sim.clusters.get(cluster, []) if cluster else list(sim.nodes.values())
    out: dict[str, Any] = {}
    for n in nodes:
        jobs = [
            j
            for j in sim.jobs.values()
            if n.fqdn in j.hosts
            and sim.job_state(j, now) in ACTIVE_JOB_STATES
            and (waiting or sim.job_state(j, now) != "waiting")
        ]
        entry = node_status(sim, n, jobs, now)
        if details:
            entry["reservations"] = [job_item(sim, j, details=False, with_events=False) for j in jobs]
        out[n.fqdn] = entry
    result: dict[str, Any] = {"uid": int(now), "nodes": out, "disks": {}}
    if cluster is None:
        result["vlans"] = {}
        result["subnets"] = {}
    return result


def node_status(sim: G5kSim, n: SimNode, jobs: list[SimJob], now: float) -> dict[str, Any]:
    """OAR's soft state and slots (cores) of a node: busy ones, those besteffort jobs hold
    (freeable, they give way), free ones."""
    cores = int(n.ref["architecture"]["nb_cores"])
    if n.hard == "dead":
        return {"hard": n.hard, "soft": "unknown", "comment": "", "free_slots": 0,
                "freeable_slots": 0, "busy_slots": 0}
    running = [j for j in jobs if sim.job_state(j, now) == "running"]
    freeable = min(sum(j.cores.get(n.fqdn, 0) for j in running if j.queue == "besteffort"), cores)
    busy = min(sum(j.cores.get(n.fqdn, 0) for j in running if j.queue != "besteffort"), cores - freeable)
    free = cores - busy - freeable
    held = busy + freeable
    # g5k-api's names: the larger part first, `_besteffort` when besteffort jobs hold some.
    if held == 0:
        soft = "free"
    elif free == 0:
        soft = "busy_besteffort" if freeable else "busy"
    else:
        soft = "busy_free" if held >= free else "free_busy"
        if freeable:
            soft += "_besteffort"
    return {"hard": n.hard, "soft": soft, "comment": "", "free_slots": free,
            "freeable_slots": freeable, "busy_slots": busy}
