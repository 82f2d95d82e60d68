"""OAR's admission and scheduling of a job submitted to the emulated site: the payload read the way
oarsub and the API read it, the nodes each resource group may use, and the earliest start (or the
advance reservation's own) at which the request fits, honouring the `day`/`night` periods and the
`besteffort` queue (whose jobs give way: they never block another job and are killed when one
needs their nodes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piseduce.sim.g5k import oar, windows
from piseduce.sim.g5k.resources import Allocation, Host, ResourceSpec, choose, parse_request

if TYPE_CHECKING:
    from piseduce.sim.g5k.model import G5kSim
    from piseduce.sim.g5k.records import SimJob, SimNode

Predicate = Callable[[Mapping[str, object]], bool]
BESTEFFORT = "besteffort"
INVALID = "The job you are trying to submit is not valid: "


class AdmissionError(ValueError):
    """A refusal of OAR (or of the API before it), with the text users see."""

    def __init__(self, message: str, *, oar_rule: bool = True) -> None:
        super().__init__(message)
        self.oar_rule = oar_rule  # True: OAR's own answer (the API wraps it in its proxy text)


@dataclass
class JobRequest:
    command: str
    types: list[str]
    queue: str
    spec: ResourceSpec
    props: Predicate
    group_filters: list[Predicate]
    reservation: float | None  # the advance reservation's start, or None (as soon as possible)
    period: str | None  # "day", "night" or None

    @property
    def besteffort(self) -> bool:
        return self.queue == BESTEFFORT


def _types(payload: Mapping[str, Any]) -> list[str]:
    types = payload.get("types") or []
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise AdmissionError(INVALID + "types must be a list of strings", oar_rule=False)
    return list(types)


def read_request(payload: Mapping[str, Any], known: set[str], now: float) -> JobRequest:
    command = payload.get("command")
    reservation = payload.get("reservation")
    if reservation is not None and not isinstance(reservation, str):
        raise AdmissionError(INVALID + "reservation must be a String", oar_rule=False)
    if not command and reservation is None:
        raise AdmissionError(INVALID + "you must give a :command", oar_rule=False)
    types = _types(payload)
    queue = str(payload.get("queue") or "default")
    if BESTEFFORT in types:
        queue = BESTEFFORT  # `-t besteffort` is the besteffort queue
    try:
        spec = parse_request(payload.get("resources"))
        props = oar.parse_properties(str(payload.get("properties") or ""), known)
        filters = [oar.parse_properties(g.filter, known) for g in spec.groups]
        start = oar.parse_reservation(reservation, now) if reservation is not None else None
    except oar.OarSyntaxError as exc:
        raise AdmissionError(f"oarsub: {exc}") from None
    periods: list[str] = [t for t in ("day", "night") if t in types]
    request = JobRequest(str(command or ""), types, queue, spec, props, filters, start,
                         periods[0] if periods else None)
    _admission_rules(request, periods, now)
    return request


def _admission_rules(req: JobRequest, periods: list[str], now: float) -> None:
    if req.reservation is not None and req.reservation < now - 60:
        raise AdmissionError("[ADMISSION RULE] Error: the reservation date is in the past")
    if req.queue == "admin":
        raise AdmissionError(f"[ADMISSION RULE] Only administrators can use the {req.queue} queue")
    if req.besteffort and req.reservation is not None:
        raise AdmissionError("[ADMISSION RULE] Error: a besteffort job cannot be an advance reservation")
    if len(periods) > 1:
        raise AdmissionError("[ADMISSION RULE] Error: a job cannot be of both types day and night")
    if req.period and req.spec.walltime > windows.longest(req.period):
        hours = windows.longest(req.period) // 3600
        raise AdmissionError(
            f"[ADMISSION RULE] Error: a {req.period} job lasts at most {hours} h (walltime "
            f"{oar.format_walltime(req.spec.walltime)} asked); submit it without the type {req.period}"
        )
    if "deploy" in req.types and not req.spec.whole_nodes:
        raise AdmissionError(
            "[ADMISSION RULE] Error: a deploy job reserves whole nodes: ask for nodes (or host, "
            "cluster, switch), not cpu or core"
        )


def candidates(sim: G5kSim, req: JobRequest) -> dict[int, list[SimNode]]:
    """The alive nodes each group may use: queue, deploy and besteffort support, properties."""
    out: dict[int, list[SimNode]] = {}
    for i, group_filter in enumerate(req.group_filters):
        out[i] = [
            n for n in sim.nodes.values()
            if n.hard == "alive" and _queue_ok(n, req) and req.props(n.oar_properties())
            and group_filter(n.oar_properties())
        ]
    return out


def _queue_ok(node: SimNode, req: JobRequest) -> bool:
    jt = node.ref["supported_job_types"]
    if "deploy" in req.types and not jt.get("deploy"):
        return False
    if req.besteffort:
        return bool(jt.get("besteffort"))
    return req.queue in jt["queues"]


def holds(job: SimJob, start: float, end: float, launch: float, kill: float) -> bool:
    return job.start_at < end and start < job.stop_at(launch, kill)


def used_cores(sim: G5kSim, fqdn: str, start: float, end: float, *, besteffort: bool,
               exclude: int | None = None) -> int:
    """Cores of `fqdn` held during [start, end) by the jobs a new job must wait for: every job
    for a besteffort job, all but the besteffort ones for the others."""
    used = 0
    for job in sim.jobs.values():
        if job.uid == exclude or fqdn not in job.cores:
            continue
        if job.queue == BESTEFFORT and not besteffort:
            continue
        if holds(job, start, end, sim.launch, sim.kill):
            used += job.cores[fqdn]
    return used


def _hosts(sim: G5kSim, nodes: list[SimNode], start: float, end: float, besteffort: bool) -> list[Host]:
    out = []
    for n in nodes:
        arch = n.ref["architecture"]
        cores = int(arch["nb_cores"])
        free = cores - used_cores(sim, n.fqdn, start, end, besteffort=besteffort)
        out.append(Host(n.fqdn, n.cluster, _switch(n), int(arch["nb_procs"]), cores, max(free, 0)))
    return out


def _switch(node: SimNode) -> str:
    for adapter in node.ref["network_adapters"]:
        if adapter.get("mounted") and adapter.get("switch"):
            return str(adapter["switch"])
    return ""


Pools = Mapping[int, list["SimNode"]]


def fit_at(sim: G5kSim, req: JobRequest, pools: Pools, start: float) -> Allocation | None:
    end = start + sim.launch + req.spec.walltime
    hosts = {i: _hosts(sim, nodes, start, end, req.besteffort) for i, nodes in pools.items()}
    return choose(req.spec, hosts)


def place(sim: G5kSim, req: JobRequest, pools: Pools, now: float) -> tuple[float, Allocation]:
    """The start and the resources of the job; AdmissionError when it can never run."""
    if req.reservation is not None:
        if req.period and not windows.inside(req.period, req.reservation, req.spec.walltime):
            raise AdmissionError(f"# Reservation not valid --> REJECTED: a {req.period} job must start "
                                 f"and end within one {req.period} period")
        got = fit_at(sim, req, pools, req.reservation)
        if not got:
            raise AdmissionError("# Reservation not valid --> REJECTED: the resources are busy"
                                 f" ({_holders(sim, req, pools)})")
        return req.reservation, got
    times = {now} | {j.stop_at(sim.launch, sim.kill) for j in sim.jobs.values()}
    if req.period:
        times |= {b for b, _e in windows.periods(req.period, now)}
    for t in sorted(x for x in times if x >= now):
        if req.period:
            fitted = windows.fit(req.period, t, req.spec.walltime)
            if fitted is None:
                continue
            t = fitted
        got = fit_at(sim, req, pools, t)
        if got:
            return t, got
    raise AdmissionError("There are not enough resources for your request (the nodes matching it "
                         "are never free together; check the properties and the counts)")


def _holders(sim: G5kSim, req: JobRequest, pools: Pools) -> str:
    assert req.reservation is not None
    wanted = {n.fqdn for nodes in pools.values() for n in nodes}
    end = req.reservation + sim.launch + req.spec.walltime
    busy = [j for j in sim.jobs.values() if set(j.hosts) & wanted
            and holds(j, req.reservation, end, sim.launch, sim.kill)]
    return "; ".join(f"{','.join(sorted(set(j.hosts) & wanted))} held by job {j.uid}" for j in busy[:3])


def preempt(sim: G5kSim, job: SimJob) -> None:
    """A job that needs nodes held by besteffort jobs has them killed just before it starts."""
    if job.queue == BESTEFFORT:
        return
    for other in sim.jobs.values():
        if other.queue != BESTEFFORT or other.uid == job.uid or not set(other.cores) & set(job.cores):
            continue
        if holds(other, job.start_at, job.stop_at(sim.launch, sim.kill), sim.launch, sim.kill):
            at = max(job.start_at - sim.kill, other.start_at)
            if other.preempted_at is None or at < other.preempted_at:
                other.preempted_at, other.preempted_by = at, job.uid
