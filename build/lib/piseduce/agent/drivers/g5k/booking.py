"""Booking on Grid'5000: ONE OAR job per PiSeduce reservation (one node each), of type `deploy`,
whose `properties` name exactly that host (`host in ('grisou-1.nancy.grid5000.fr')`), with the
reservation's duration as walltime and an advance `reservation` date for a future start. One job
per reservation (rather than one per booking request) is deliberate: PiSeduce books, extends and
destroys each node on its own, and ending one reservation must never touch another (DESIGN §5.2),
which a shared multi-node job could not guarantee. The jobs of one request are submitted
together; if OAR refuses one, the others are deleted and the whole booking is rolled back with
OAR's message. Extension uses the walltime API; cancellation deletes the job.

Jobs not created by this agent (their name does not start with its prefix) are only ever read,
to show their nodes as busy: they are never modified or deleted (the seed's NOTE).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

from piseduce.agent.drivers.base import (
    ActionRefused,
    BookingRefused,
    CredentialsRequired,
    DriverError,
    ReservationView,
    StepContext,
)
from piseduce.agent.drivers.g5k import jobs as g5k_jobs
from piseduce.agent.drivers.g5k.access import G5kAccess, hook_error, step_error
from piseduce.agent.drivers.g5k.client import (
    G5kAuthError,
    G5kClient,
    G5kError,
    G5kUnavailable,
    oar_reservation,
    oar_walltime,
)
from piseduce.agent.drivers.g5k.inventory import ENDED_JOB_STATES, FQDN, G5kInventory, hhmm, ts

log = logging.getLogger(__name__)

# A start further than this in the future becomes an OAR advance reservation.
ADVANCE_SECONDS = 60.0


class G5kBooking:
    def __init__(self, access: G5kAccess, inventory: G5kInventory) -> None:
        self.access = access
        self.inventory = inventory

    def fqdn(self, node_name: str, attrs: Mapping[str, Any]) -> str:
        fqdn = str(attrs.get("fqdn") or f"{node_name}.{self.access.site}.grid5000.fr")
        if not FQDN.match(fqdn):
            # It goes into an OAR SQL filter: never anything but a host name.
            raise BookingRefused(f"{node_name}: invalid host name {fqdn!r}")
        return fqdn

    async def named_jobs(self, api: G5kClient, reservation_id: int) -> list[dict[str, Any]]:
        return await g5k_jobs.named_jobs(api, self.access.job_name(reservation_id))

    async def delete_named(self, api: G5kClient, reservation_id: int, keep: Any = None) -> list[Any]:
        deleted = await g5k_jobs.delete_named(api, self.access.job_name(reservation_id), keep)
        if deleted:
            self.inventory.forget_status()  # the calendar changed
        return deleted

    async def find_or_submit(self, ctx: StepContext) -> None:
        """Attach the job this reservation's booking made (found by its name), or, when the
        booking never reached Grid'5000, submit it now: the slot was booked here."""
        creds = self.access.step_creds(ctx)
        r = ctx.reservation
        fqdn = self.fqdn(ctx.node.name, ctx.node.attrs)
        try:
            async with self.access.client(creds) as api:
                jobs = [j for j in await self.named_jobs(api, r.id)
                        if j.get("properties") in (None, f"host in ('{fqdn}')")]
                keep = jobs[0]["uid"] if jobs else None
                await self.delete_named(api, r.id, keep=keep)  # duplicates, strays
                if jobs:
                    ctx.state.update(g5k_jobs.attached(jobs[0], fqdn, api.user))
                    await ctx.log(f"Grid'5000 job {keep} of this booking found again and attached")
                    return
                ctx.state.update(await self.submit(api, r, dt.datetime.now(dt.UTC)))
        except G5kError as exc:
            raise step_error(exc, "booking the node on Grid'5000") from exc
        self.inventory.forget_status()
        await ctx.log(f"the booking had not reached Grid'5000: OAR job {ctx.state['job_id']} submitted now")

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        creds = self.access.require(credentials)
        now = dt.datetime.now(dt.UTC)
        async with self.access.client(creds) as api:
            results = await asyncio.gather(
                *(self.submit(api, r, now) for r in reservations), return_exceptions=True
            )
            made = [res for res in results if isinstance(res, dict)]
            failures = [
                (r, res)
                for r, res in zip(reservations, results, strict=True)
                if isinstance(res, BaseException)
            ]
            if not failures:
                self.inventory.forget_status()  # the calendar changed
                return {
                    r.id: res for r, res in zip(reservations, results, strict=True) if isinstance(res, dict)
                }
            # All or nothing: the jobs OAR accepted for this booking go away with it, and so do
            # those it may have accepted without the answer reaching us (found by their name).
            for state in made:
                try:
                    await api.delete_job(state["job_id"])
                except G5kError as rollback_exc:
                    log.warning(
                        "rolling back: cannot delete Grid'5000 job %s: %s",
                        state["job_id"],
                        rollback_exc.message,
                    )
            for r, _exc in failures:
                try:
                    await self.delete_named(api, r.id)
                except G5kError as rollback_exc:
                    log.warning("rolling back: cannot look for the Grid'5000 job of reservation %s: %s",
                                r.id, rollback_exc.message)
        reservation, err = failures[0]
        if isinstance(err, G5kAuthError):
            raise CredentialsRequired(err.message)
        if isinstance(err, G5kUnavailable):
            raise DriverError(f"nothing was booked: {err.message}")
        if isinstance(err, G5kError):
            raise BookingRefused(f"Grid'5000 refused the job for {reservation.node.name}: {err.message}")
        if isinstance(err, DriverError):
            raise err
        raise DriverError(f"booking {reservation.node.name} on Grid'5000 failed: {err}")

    async def submit(self, api: G5kClient, r: ReservationView, now: dt.datetime) -> dict[str, Any]:
        fqdn = self.fqdn(r.node.name, r.node.attrs)
        future = r.start > now + dt.timedelta(seconds=ADVANCE_SECONDS)
        begin = r.start if future else now
        walltime = oar_walltime((r.end - begin).total_seconds())
        payload: dict[str, Any] = {
            "name": self.access.job_name(r.id),
            "resources": f"nodes=1,walltime={walltime}",
            "types": ["deploy"],
            "properties": f"host in ('{fqdn}')",
            # A deploy job's command runs on the frontend; it must outlive any walltime extension.
            "command": "sleep infinity",
            "queue": "default",
        }
        if future:
            payload["reservation"] = oar_reservation(r.start)
        job = await api.submit_job(payload)
        uid = job["uid"]
        state = str(job.get("state") or "").lower()
        if state == "error":
            raise G5kError(f"OAR put job {uid} in error: {job.get('message') or 'no reason given'}")
        assigned = job.get("assigned_nodes")
        if assigned and list(assigned) != [fqdn]:
            await api.delete_job(uid)
            raise G5kError(f"OAR assigned {', '.join(assigned)} instead of {fqdn}")
        scheduled = ts(job.get("scheduled_at"))
        if not future and scheduled is not None and scheduled > now + dt.timedelta(minutes=5):
            # OAR queued it behind a job PiSeduce could not see: the node is not free now.
            await api.delete_job(uid)
            raise G5kError(
                f"{fqdn} is held by another Grid'5000 job: "
                f"OAR could start this one only at {hhmm(scheduled)}"
            )
        log.info("Grid'5000 job %s submitted for %s (reservation %s)", uid, fqdn, r.id)
        return {
            "job_id": uid,
            "job_name": payload["name"],
            "fqdn": fqdn,
            "g5k_user": api.user,
            "walltime": walltime,
            **({"oar_reservation": payload["reservation"]} if future else {}),
        }

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        job_id = reservation.driver_state.get("job_id")
        creds = self.access.require(credentials)
        found: dict[str, Any] = {}
        try:
            async with self.access.client(creds) as api:
                if job_id is None:
                    jobs = await self.named_jobs(api, reservation.id)
                    if not jobs:
                        raise ActionRefused("no Grid'5000 job is attached to this reservation")
                    fqdn = self.fqdn(reservation.node.name, reservation.node.attrs)
                    found = g5k_jobs.attached(jobs[0], fqdn, api.user)
                    job_id = jobs[0]["uid"]
                job = await api.job(job_id)
                state = str(job.get("state") or "").lower()
                if state in ENDED_JOB_STATES:
                    raise ActionRefused(f"Grid'5000 job {job_id} has already ended ({state})")
                if state != "running":
                    raise ActionRefused(
                        f"Grid'5000 extends only running jobs and job {job_id} is {state}: "
                        "extend again once the reservation has started"
                    )
                started = ts(job.get("started_at")) or ts(job.get("scheduled_at")) or reservation.start
                current = int(job.get("walltime") or 0)
                needed = math.ceil((new_end - started).total_seconds()) - current
                if needed <= 0:
                    return {**found, "walltime": oar_walltime(current)}
                delta = "+" + oar_walltime(needed)
                try:
                    answer = await api.change_walltime(job_id, delta)
                except G5kError as exc:
                    if isinstance(exc, G5kAuthError | G5kUnavailable):
                        raise
                    raise ActionRefused(f"Grid'5000 refused to extend job {job_id}: {exc.message}") from exc
                after = await api.job(job_id)
        except G5kError as exc:
            raise hook_error(exc, "extending the Grid'5000 job") from exc
        granted = int(after.get("walltime") or 0)
        log.info("Grid'5000 job %s: walltime change %s (%s)", job_id, delta, answer.get("status", "accepted"))
        if granted < current + needed:
            # OAR accepted the request but keeps it pending (the next job on the nodes blocks it):
            # the reservation must not outlive what Grid'5000 granted. OAR may still grant it
            # later; the job then only holds the nodes longer, and destroy deletes it anyway.
            raise ActionRefused(
                f"Grid'5000 cannot grant the extension of job {job_id} now: another job follows on "
                f"its nodes (the request {delta} stays pending on Grid'5000); try a shorter extension"
            )
        return {**found, "walltime": oar_walltime(granted)}

    async def on_cancel(self, reservation: ReservationView, credentials: Mapping[str, str] | None) -> None:
        job_id = reservation.driver_state.get("job_id")
        creds = self.access.user_creds(credentials)
        if creds is None:
            if job_id is None or reservation.end <= dt.datetime.now(dt.UTC):
                return  # nothing known to delete, or the job ended with its walltime
            raise CredentialsRequired(f"no Grid'5000 login was forwarded to delete job {job_id}")
        what = f"deleting Grid'5000 job {job_id}" if job_id is not None else "deleting the Grid'5000 job"
        try:
            async with self.access.client(creds) as api:
                deleted = await api.delete_job(job_id) if job_id is not None else False
                # A job of this booking whose id was never stored goes too.
                others = await self.delete_named(api, reservation.id, keep=job_id)
        except G5kError as exc:
            raise hook_error(exc, what) from exc
        self.inventory.forget_status()
        if job_id is not None:
            log.info("Grid'5000 job %s %s", job_id, "deleted" if deleted else "was already gone")
        if others:
            log.info("reservation %s: Grid'5000 jobs %s found by name and deleted", reservation.id, others)
