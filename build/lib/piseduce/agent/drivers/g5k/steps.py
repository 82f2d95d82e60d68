"""The g5k processes as data. `deploy`/`redeploy` = prepare (attach or submit the job), wait for
the job to run (with back-off), submit a Kadeploy run of the chosen environment with the user's
SSH keys and poll it until `terminated` (the node's result must be `OK`), then connect;
`destroy` = delete the job (already gone is success). Every step is bounded in time (scaled by
`timeout_scale`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from piseduce.agent.drivers.base import Process, Step, StepContext, StepError
from piseduce.agent.drivers.g5k.access import SETTINGS_HINT, G5kAccess, step_error
from piseduce.agent.drivers.g5k.booking import G5kBooking
from piseduce.agent.drivers.g5k.client import G5kAuthError, G5kClient, G5kError, G5kNotFound, G5kUnavailable
from piseduce.agent.drivers.g5k.inventory import ENDED_JOB_STATES, G5kInventory, hhmm, ts

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

# Step bounds at timeout_scale 1 (seconds).
JOB_START_TIMEOUT = 1800.0  # OAR starts a deploy job within minutes of its start time
KADEPLOY_TIMEOUT = 1800.0  # a Kadeploy run takes 5 to 15 minutes
KADEPLOY_EXPECTED = 400.0  # for the progress bar only
DELETE_TIMEOUT = 300.0
POLL_FIRST, POLL_MAX = 2.0, 30.0
# Consecutive failed polls (each already retried by the client) before a step gives up.
MAX_POLL_FAILURES = 5


class G5kSteps:
    def __init__(
        self, config: AgentConfig, access: G5kAccess, inventory: G5kInventory, booking: G5kBooking
    ) -> None:
        self.config = config
        self.access = access
        self.inventory = inventory
        self.booking = booking
        self._poll_wait: dict[tuple[int, str], float] = {}

    def processes(self) -> dict[str, Process]:
        t = self.access.scale
        poll = max(0.05, 0.5 * t)
        deploy = (
            Step("prepare", self.prepare, label="prepare the deployment"),
            Step(
                "wait_job",
                self.wait_job_run,
                self.wait_job_done,
                label="wait for the OAR job",
                # done() fails first, with OAR's message; this is the engine's safety net.
                fail_after=(JOB_START_TIMEOUT + 120) * t,
                poll=poll,
            ),
            Step(
                "run_kadeploy",
                self.run_kadeploy_run,
                self.run_kadeploy_done,
                label="deploy with Kadeploy",
                fail_after=KADEPLOY_TIMEOUT * t,
                poll=poll,
                weight=8,
            ),
            Step("connect", self.connect, label="ready"),
        )
        destroy = (
            Step(
                "delete_job",
                self.delete_job_run,
                self.delete_job_done,
                label="delete the OAR job",
                fail_after=DELETE_TIMEOUT * t,
                poll=poll,
            ),
        )
        return {
            "deploy": Process("deploy", deploy),
            "redeploy": Process("redeploy", deploy),
            "destroy": Process("destroy", destroy),
        }

    async def _backoff(self, ctx: StepContext, step: str) -> None:
        """Polls start every POLL_FIRST seconds and slow down to POLL_MAX (scaled)."""
        key = (ctx.reservation.id, step)
        wait = self._poll_wait.get(key)
        scale = self.access.scale
        nxt = POLL_FIRST * scale if wait is None else min(wait * 1.5, POLL_MAX * scale)
        self._poll_wait[key] = nxt
        if wait is not None:
            await asyncio.sleep(wait)

    @staticmethod
    async def _report(ctx: StepContext, percent: int, message: str) -> None:
        """Progress of a poll; the message (an event in the timeline) only when it changes."""
        if ctx.state.get("last_report") == message:
            await ctx.progress(percent)
            return
        ctx.state["last_report"] = message
        await ctx.progress(percent, message)

    def _api_down(self, ctx: StepContext, exc: G5kUnavailable, what: str) -> None:
        """A poll could not reach the API: tolerated a few times in a row, then fatal."""
        n = int(ctx.state.get("api_failures", 0)) + 1
        ctx.state["api_failures"] = n
        log.warning("%s: %s (%d/%d)", what, exc.message, n, MAX_POLL_FAILURES)
        if n >= MAX_POLL_FAILURES:
            raise StepError(f"{what}: {exc.message} ({n} polls in a row failed)")

    async def prepare(self, ctx: StepContext) -> None:
        self.access.step_creds(ctx)
        if ctx.state.get("job_id") is None:
            await self.booking.find_or_submit(ctx)
        # A new Kadeploy run for this action (a redeploy keeps the job, not the last run).
        ctx.state["deployment"] = None
        ctx.state["deploy_requested_at"] = time.time()
        ctx.state["wait_since"] = time.time()
        ctx.state["api_failures"] = 0
        for step in ("wait_job", "run_kadeploy", "delete_job"):
            self._poll_wait.pop((ctx.reservation.id, step), None)
        ctx.connection.clear()
        await ctx.progress(100)

    async def wait_job_run(self, ctx: StepContext) -> None:
        await ctx.log(f"waiting for OAR job {ctx.state['job_id']} to run")

    async def wait_job_done(self, ctx: StepContext) -> bool:
        await self._backoff(ctx, "wait_job")
        job_id = ctx.state["job_id"]
        creds = self.access.step_creds(ctx)
        try:
            async with self.access.client(creds) as api:
                job = await api.job(job_id)
        except G5kNotFound:
            raise StepError(
                f"OAR job {job_id} no longer exists: destroy this reservation and book again"
            ) from None
        except G5kUnavailable as exc:
            self._api_down(ctx, exc, f"reading OAR job {job_id}")
            return False
        except G5kError as exc:
            raise step_error(exc, f"reading OAR job {job_id}") from exc
        ctx.state["api_failures"] = 0
        state = str(job.get("state") or "").lower()
        fqdn = str(ctx.state.get("fqdn") or self.booking.fqdn(ctx.node.name, ctx.node.attrs))
        if state == "running":
            assigned = list(job.get("assigned_nodes") or [])
            if assigned and fqdn not in assigned:
                raise StepError(f"OAR job {job_id} runs on {', '.join(assigned)}, not on {fqdn}")
            await ctx.progress(100, f"OAR job {job_id} is running")
            return True
        if state in ENDED_JOB_STATES:
            raise StepError(
                f"OAR job {job_id} is {state}: {job.get('message') or 'it ended'}; "
                "destroy this reservation and book again"
            )
        since = float(ctx.state.get("wait_since") or time.time())
        deadline = max(since, ctx.reservation.start.timestamp()) + JOB_START_TIMEOUT * self.access.scale
        if time.time() > deadline:
            raise StepError(
                f"OAR job {job_id} did not start in time "
                f"(still {state}: {job.get('message') or 'no message'})"
            )
        scheduled = ts(job.get("scheduled_at"))
        when = f", scheduled at {hhmm(scheduled)}" if scheduled else ""
        await self._report(ctx, 10 if state == "waiting" else 60, f"OAR job {job_id} is {state}{when}")
        return False

    async def run_kadeploy_run(self, ctx: StepContext) -> None:
        if ctx.state.get("deployment"):
            return  # submitted by this action already (a resumed step)
        creds = self.access.step_creds(ctx)
        fqdn = str(ctx.state.get("fqdn") or self.booking.fqdn(ctx.node.name, ctx.node.attrs))
        env = str(ctx.params.get("environment") or "")
        if not env:
            raise StepError("no environment was chosen")
        payload: dict[str, Any] = {"nodes": [fqdn], "environment": env}
        keys = [k for k in ctx.params.get("ssh_keys") or [] if isinstance(k, str) and k.strip()]
        if keys:
            payload["key"] = "\n".join(keys) + "\n"
        since = float(ctx.state.get("deploy_requested_at") or time.time())
        try:
            async with self.access.client(creds) as api:
                adopted = await self._running_deployment(api, fqdn, since)
                dep = adopted or await api.submit_deployment(payload, since)
        except G5kError as exc:
            raise step_error(exc, f"Kadeploy refused to deploy {env} on {fqdn}") from exc
        ctx.state["deployment"] = dep["uid"]
        ctx.state["deployment_started"] = time.time()
        await ctx.log(f"Kadeploy deployment {dep['uid']} of {env} on {fqdn} submitted")

    async def _running_deployment(self, api: G5kClient, fqdn: str, since: float) -> dict[str, Any] | None:
        """A run of this node submitted since `since` whose answer was lost (crash, dead proxy)."""
        for status in ("waiting", "processing"):
            for d in await api.items(f"{api.site_path}/deployments", user=api.user, status=status):
                if d.get("nodes") == [fqdn] and float(d.get("created_at") or 0) >= since - 1:
                    return d
        return None

    async def run_kadeploy_done(self, ctx: StepContext) -> bool:
        await self._backoff(ctx, "run_kadeploy")
        uid = str(ctx.state["deployment"])
        creds = self.access.step_creds(ctx)
        fqdn = str(ctx.state.get("fqdn") or self.booking.fqdn(ctx.node.name, ctx.node.attrs))
        try:
            async with self.access.client(creds) as api:
                dep = await api.deployment(uid)
        except G5kUnavailable as exc:
            self._api_down(ctx, exc, f"reading Kadeploy deployment {uid}")
            return False
        except G5kError as exc:
            raise step_error(exc, f"reading Kadeploy deployment {uid}") from exc
        ctx.state["api_failures"] = 0
        status = str(dep.get("status") or "")
        env = dep.get("environment") or ctx.params.get("environment")
        if status in ("waiting", "processing"):
            elapsed = time.time() - float(ctx.state.get("deployment_started") or time.time())
            pct = min(95, 5 + int(90 * elapsed / (KADEPLOY_EXPECTED * self.access.scale)))
            await self._report(ctx, pct, f"Kadeploy {status}: {env} on {fqdn}")
            return False
        if status == "terminated":
            result = (dep.get("result") or {}).get(fqdn) or {}
            if str(result.get("state", "")).upper() == "OK":
                await ctx.progress(100, f"{env} deployed on {fqdn}")
                return True
            if result:
                where = "/".join(str(result[k]) for k in ("macro", "micro") if result.get(k))
                raise StepError(
                    f"Kadeploy could not deploy {env} on {fqdn}: node {result.get('state', 'KO')}"
                    + (f" at {where}" if where else "")
                    + f" (deployment {uid}); redeploy to try again"
                )
            raise StepError(f"Kadeploy deployment {uid} ended without a result for {fqdn}")
        if status == "error":
            raise StepError(f"Kadeploy deployment {uid} failed: {dep.get('output') or 'no reason given'}")
        if status == "canceled":
            raise StepError(f"Kadeploy deployment {uid} was canceled")
        raise StepError(f"Kadeploy deployment {uid} is in an unknown state {status!r}")

    async def connect(self, ctx: StepContext) -> None:
        fqdn = str(ctx.state.get("fqdn") or self.booking.fqdn(ctx.node.name, ctx.node.attrs))
        login = str(ctx.state.get("g5k_user") or "<your Grid'5000 login>")
        ctx.connection.update(
            {
                "ssh": f"ssh root@{fqdn}",
                "host": fqdn,
                "user": "root",
                "via": "access.grid5000.fr",
                "hint": f"from outside Grid'5000: ssh -J {login}@access.grid5000.fr root@{fqdn}",
            }
        )
        await ctx.log(f"ready: ssh root@{fqdn} (from outside Grid'5000, through access.grid5000.fr)")

    def _job_over(self, ctx: StepContext) -> bool:
        return ctx.reservation.end <= dt.datetime.now(dt.UTC)

    async def delete_job_run(self, ctx: StepContext) -> None:
        ctx.connection.clear()
        job_id = ctx.state.get("job_id")
        creds = self.access.user_creds(ctx.credentials)
        if creds is not None:
            await self._delete_unattached(ctx, creds, job_id)
        if job_id is None:
            await ctx.log("no Grid'5000 job to delete")
            return
        if creds is None:
            if self._job_over(ctx):
                await ctx.log(
                    f"OAR job {job_id} ends with its walltime (no credentials to delete it)", "warning"
                )
                ctx.state["job_gone"] = True
                return
            raise StepError(
                f"Grid'5000 credentials missing to delete OAR job {job_id}: set them in {SETTINGS_HINT}"
            )
        try:
            async with self.access.client(creds) as api:
                deleted = await api.delete_job(job_id)
        except G5kError as exc:
            if self._job_over(ctx) and not isinstance(exc, G5kAuthError):
                await ctx.log(
                    f"cannot delete OAR job {job_id} ({exc.message}); it ends with its walltime", "warning"
                )
                ctx.state["job_gone"] = True
                return
            raise step_error(exc, f"deleting OAR job {job_id}") from exc
        self.inventory.forget_status()
        ctx.state["job_gone"] = not deleted
        await ctx.log(f"OAR job {job_id} {'deleted' if deleted else 'was already gone'}")

    async def _delete_unattached(self, ctx: StepContext, creds: tuple[str, str], job_id: Any) -> None:
        """Jobs of this reservation whose id was never stored (found by their name) are deleted."""
        try:
            async with self.access.client(creds) as api:
                others = await self.booking.delete_named(api, ctx.reservation.id, keep=job_id)
        except G5kError as exc:
            if self._job_over(ctx) and not isinstance(exc, G5kAuthError):
                return  # they end with their walltime
            raise step_error(exc, "looking for the Grid'5000 jobs of this reservation") from exc
        for uid in others:
            await ctx.log(f"OAR job {uid} of this reservation (never attached) deleted")

    async def delete_job_done(self, ctx: StepContext) -> bool:
        job_id = ctx.state.get("job_id")
        if job_id is None or ctx.state.get("job_gone"):
            return True
        await self._backoff(ctx, "delete_job")
        creds = self.access.step_creds(ctx)
        try:
            async with self.access.client(creds) as api:
                job = await api.job(job_id)
        except G5kNotFound:
            return True
        except G5kUnavailable as exc:
            if self._job_over(ctx):
                return True
            self._api_down(ctx, exc, f"reading OAR job {job_id}")
            return False
        except G5kError as exc:
            raise step_error(exc, f"reading OAR job {job_id}") from exc
        if str(job.get("state") or "").lower() in ENDED_JOB_STATES:
            ctx.state["job_gone"] = True
            await ctx.progress(100, f"OAR job {job_id} is {job.get('state')}")
            return True
        return False

    async def close(self) -> None:
        self._poll_wait.clear()
