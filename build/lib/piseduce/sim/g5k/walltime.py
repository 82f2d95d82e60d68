"""oarwalltime, as the walltime API drives it: a running job's walltime is changed at once when
its nodes are free for the extra time; otherwise the increase stays pending and OAR grants it as
soon as the job that blocks it goes away (or never, if the job ends first). `delay_next_jobs`
pushes back the jobs that wait after it (not advance reservations, which keep their date)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piseduce.sim.g5k import oar, scheduling

if TYPE_CHECKING:
    from piseduce.sim.g5k.model import G5kSim
    from piseduce.sim.g5k.records import SimJob

INVALID = "The job walltime change you are trying to submit is not valid: "


def _flag(payload: dict[str, Any], key: str) -> bool:
    value = payload.get(key)
    return value is True or str(value).lower() in ("true", "yes", "1")


def _blocking(sim: G5kSim, job: SimJob, extra: int) -> list[SimJob]:
    old_end = job.natural_end(sim.launch)
    return sim._busy(job.hosts, old_end, old_end + extra, exclude=job.uid)


def _delay(sim: G5kSim, job: SimJob, blocking: list[SimJob], extra: int) -> bool:
    """Push the waiting jobs after `job` by the extra time; False when one of them cannot move."""
    now = sim.now()
    if any(b.reservation or b.start_at <= now for b in blocking):
        return False
    new_end = job.natural_end(sim.launch) + extra
    for b in blocking:
        b.start_at = max(b.start_at, new_end)
        scheduling.preempt(sim, b)
    return True


def change(sim: G5kSim, job: SimJob, payload: dict[str, Any]) -> dict[str, Any]:
    raw = payload.get("walltime")
    if raw is None or raw == "":
        raise ValueError(INVALID + "walltime can't be blank")
    try:
        sign, seconds = oar.parse_walltime_delta(raw)
    except oar.OarSyntaxError as exc:
        raise ValueError(INVALID + str(exc)) from None
    new = job.walltime + seconds if sign == "+" else job.walltime - seconds if sign == "-" else seconds
    elapsed = sim.now() - job.launched_at(sim.launch)
    if new <= elapsed + 60:
        raise PermissionError(
            f"Walltime change for job {job.uid} is not possible: the new walltime is too short"
        )
    asked = new - job.walltime
    job.pending = 0
    job.types_of_change = {k: _flag(payload, k) for k in ("force", "delay_next_jobs", "whole")}
    extra = new - job.walltime
    if extra > 0:
        blocking = _blocking(sim, job, extra)
        if blocking and not job.types_of_change["force"] and not (
            job.types_of_change["delay_next_jobs"] and _delay(sim, job, blocking, extra)
        ):
            job.pending = extra  # OAR keeps the request and grants it when it can
            extra = 0
    _grant(sim, job, extra)
    sign_txt = "+" if asked >= 0 else "-"
    return {
        "status": "Accepted",
        "walltime": f"{sign_txt}{oar.format_walltime(abs(asked))}",
        "cmd_output": f"Accepted: walltime change request updated for job {job.uid}, "
        "it will be handled shortly.\n",
        "api_timestamp": int(sim.now()),
    }


def _grant(sim: G5kSim, job: SimJob, extra: int) -> None:
    if extra:
        job.granted += extra
        job.walltime += extra
        scheduling.preempt(sim, job)


def settle(sim: G5kSim) -> None:
    """What OAR's scheduler does with pending increases: grant those that fit now, drop those of
    jobs that stopped running."""
    now = sim.now()
    for job in sim.jobs.values():
        if not job.pending:
            continue
        if sim.job_state(job, now) != "running":
            job.pending = 0
        elif not _blocking(sim, job, job.pending):
            extra, job.pending = job.pending, 0
            _grant(sim, job, extra)


def item(sim: G5kSim, job: SimJob) -> dict[str, Any]:
    def signed(seconds: int) -> str:
        return ("+" if seconds >= 0 else "-") + oar.format_walltime(abs(seconds))

    opts = job.types_of_change
    return {
        "uid": job.uid,
        "walltime": oar.format_walltime(job.walltime),
        "possible": "UNLIMITED",
        "pending": signed(job.pending),
        "granted": signed(job.granted),
        "force": "YES" if opts.get("force") else "NO",
        "delay_next_jobs": "YES" if opts.get("delay_next_jobs") else "NO",
        "whole": "YES" if opts.get("whole") else "NO",
        "timeout": "UNLIMITED",
        "api_timestamp": int(sim.now()),
    }
