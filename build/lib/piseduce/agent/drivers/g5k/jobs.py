"""Finding the Grid'5000 jobs of a reservation again, by their name.

Every job the g5k driver submits is named `piseduce-<agent>-r<reservation id>` (unique: one agent,
one reservation). The name finds a job whose id was never stored: the agent API killed between its
booking's commit and storing OAR's answer, or that answer lost on the way. The driver then
attaches it (deploy, extend) or deletes it (cancel, destroy, a booking rolled back), so no job is
left running on the user's account for a reservation that no longer wants it.
"""

from __future__ import annotations

import logging
from typing import Any

from piseduce.agent.drivers.g5k.client import G5kClient, oar_walltime

log = logging.getLogger(__name__)

# OAR states of a job that still holds (or will hold) its node.
LIVE_STATES = ("waiting", "launching", "running", "hold", "tolaunch", "toackreservation", "finishing")


async def named_jobs(api: G5kClient, name: str) -> list[dict[str, Any]]:
    """The client's user's live jobs of this name, newest first."""
    found = await api.jobs(user=api.user, name=name, state=",".join(LIVE_STATES))
    jobs = [j for j in found if j.get("name") == name and str(j.get("state") or "").lower() in LIVE_STATES]
    return sorted(jobs, key=lambda j: float(j.get("submitted_at") or 0), reverse=True)


async def delete_named(api: G5kClient, name: str, keep: Any = None) -> list[Any]:
    """Delete the live jobs of this name, but `keep`; the ids of those deleted."""
    deleted = []
    for job in await named_jobs(api, name):
        if keep is not None and str(job.get("uid")) == str(keep):
            continue
        if await api.delete_job(job["uid"]):
            deleted.append(job["uid"])
            log.info("Grid'5000 job %s (%s) deleted: its reservation does not need it", job["uid"], name)
    return deleted


def attached(job: dict[str, Any], fqdn: str, user: str) -> dict[str, Any]:
    """The driver state of a job found again by its name (what a booking would have stored)."""
    return {
        "job_id": job["uid"],
        "job_name": job.get("name"),
        "fqdn": fqdn,
        "g5k_user": user,
        "walltime": oar_walltime(int(job.get("walltime") or 0)),
    }
