"""The iot-lab processes as data. Deploying submits one experiment per reservation, on the reserved
node only, for what remains of the reservation, with the chosen firmware and monitoring profile,
and follows its states to Running; destroying stops that experiment; redeploying reloads it. Each
reservation knows its own experiment id, so no action ever touches another reservation's experiment.

`driver_state` keys: `experiment_id` (the current experiment or None), `previous_id` (the one just
released, which a redeploy reloads), `experiments` (every id, oldest first), `exp_state` (last seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotlabcli import experiment as iotlab_experiment
from iotlabcli import node as iotlab_node

from piseduce.agent.drivers.base import (
    CredentialsRequired,
    InvalidParams,
    Process,
    Step,
    StepContext,
    StepError,
)
from piseduce.agent.drivers.iotlab.client import (
    CREDENTIALS_MESSAGE,
    Client,
    RemoteError,
    SiteApi,
    TransientError,
)
from piseduce.agent.drivers.iotlab.energy import IotlabEnergy
from piseduce.agent.drivers.iotlab.experiments import (
    FINAL,
    LIVE,
    PENDING,
    experiment_name,
    node_address,
    utcnow,
)
from piseduce.agent.drivers.iotlab.firmware import FirmwareStore

if TYPE_CHECKING:
    from piseduce.config import AgentConfig

PROGRESS = {"Waiting": 10, "toLaunch": 30, "Launching": 60, "Running": 100}


class CredentialsFailed(StepError):
    """A step could not act because the user's IoT-LAB credentials are missing or refused."""


class IotlabSteps:
    def __init__(
        self, config: AgentConfig, client: Client, firmwares: FirmwareStore, energy: IotlabEnergy
    ) -> None:
        self.config = config
        self.site = config.iot_site
        self.client = client
        self.firmwares = firmwares
        self.energy = energy

    def _firmware_path(self, ctx: StepContext) -> Path | None:
        name = str(ctx.params.get("firmware") or "")
        if not name:
            return None
        try:
            if ctx.params.get("firmware_source") == "upload":
                return self.firmwares.uploaded(ctx.reservation.id, name)
            return self.firmwares.path(name)
        except InvalidParams as exc:
            raise StepError(f"firmware {name!r}: {exc}") from None

    def _credentials(self, ctx: StepContext) -> Mapping[str, str]:
        if not ctx.credentials or not ctx.credentials.get("user") or not ctx.credentials.get("password"):
            raise CredentialsFailed(CREDENTIALS_MESSAGE)
        return ctx.credentials

    async def _call(self, creds: Mapping[str, str], fn: Any, *, retry: bool = True) -> Any:
        """A call from a step: credential problems and the testbed's refusals fail the step."""
        try:
            return await self.client.call(creds, fn, retry=retry)
        except CredentialsRequired as exc:
            raise CredentialsFailed(f"{CREDENTIALS_MESSAGE} ({exc})") from None

    async def _skip_release(self, ctx: StepContext, exp_id: Any, why: str) -> None:
        ctx.state["release_skipped"] = True
        await ctx.log(
            f"{why}: IoT-LAB experiment {exp_id} ends by itself at the reservation's end", "warning"
        )

    async def release(self, ctx: StepContext) -> None:
        """Stop the reservation's current experiment when it is still live (redeploy, destroy, or a
        deploy after a failure). Destroy also ends without usable credentials: the experiment then
        ends by itself at the reservation's end (its submitted duration), and an IoT-LAB node holds
        nothing of the user's that a wipe would have to remove."""
        exp_id = ctx.state.get("experiment_id")
        ctx.state.pop("release_skipped", None)
        if not exp_id:
            return
        try:
            await self._stop_live(ctx, exp_id)
        except CredentialsFailed:
            if ctx.process != "destroy":
                raise
            await self._skip_release(ctx, exp_id, "IoT-LAB credentials missing or refused")

    async def _stop_live(self, ctx: StepContext, exp_id: Any) -> None:
        creds = self._credentials(ctx)
        try:
            info = await self._call(creds, lambda api: iotlab_experiment.get_experiment(api, exp_id))
            if info.get("state") in LIVE:
                await self._call(creds, lambda api: iotlab_experiment.stop_experiment(api, exp_id))
                await ctx.log(f"IoT-LAB experiment {exp_id} stopped")
        except RemoteError as exc:
            if exc.code != 404:
                raise StepError(f"IoT-LAB refused to stop experiment {exp_id}: {exc.message}") from None
        except TransientError:
            return  # `done` polls again and the step's fail_after bounds it

    async def released(self, ctx: StepContext) -> bool:
        exp_id = ctx.state.get("experiment_id")
        try:
            if exp_id and not ctx.state.get("release_skipped") and not await self._stopped(ctx, exp_id):
                return False
        except CredentialsFailed:
            if ctx.process != "destroy":
                raise
            await self._skip_release(ctx, exp_id, "IoT-LAB credentials refused")
        ctx.state["previous_id"] = exp_id or ctx.state.get("previous_id")
        ctx.state["experiment_id"] = None
        ctx.state.pop("release_skipped", None)
        ctx.connection.clear()
        return True

    async def _stopped(self, ctx: StepContext, exp_id: Any) -> bool:
        """True once the experiment is over; a stop that did not take is asked again."""
        creds = self._credentials(ctx)
        try:
            info = await self._call(creds, lambda api: iotlab_experiment.get_experiment(api, exp_id))
        except TransientError:
            return False
        except RemoteError as exc:
            if exc.code != 404:
                raise StepError(f"IoT-LAB experiment {exp_id}: {exc.message}") from None
            info = {"state": "Stopped"}
        state = info.get("state")
        if state in LIVE:
            with contextlib.suppress(RemoteError, TransientError):  # the next poll looks again
                await self._call(creds, lambda api: iotlab_experiment.stop_experiment(api, exp_id))
            return False
        if state not in FINAL:
            return False
        ctx.state["exp_state"] = state
        return True

    def _timing(self, ctx: StepContext) -> tuple[int | None, int]:
        """(start epoch or None for as soon as possible, duration in minutes) of the experiment:
        what remains of the reservation, never more, so that the testbed frees the node in time."""
        now = utcnow()
        r = ctx.reservation
        begin, epoch = now, None
        if r.start > now + dt.timedelta(minutes=1):
            begin, epoch = r.start, int(r.start.timestamp())
        minutes = int((r.end - begin).total_seconds() // 60)
        if minutes < 1:
            raise StepError("the reservation ends in less than a minute: no experiment submitted")
        return epoch, minutes

    async def _adopt(self, ctx: StepContext, creds: Mapping[str, str]) -> int | None:
        """An experiment of ours submitted by a run that died before recording its id."""
        name, address = experiment_name(self.site, ctx.reservation), node_address(self.site, ctx.reservation)
        skip = {ctx.state.get("previous_id"), *ctx.state.get("experiments", [])}
        answer = await self._call(
            creds, lambda api: api.get_experiments(state=",".join(LIVE), limit=0, offset=0)
        )
        for item in (answer or {}).get("items", []):
            if item.get("name") != name or item.get("id") in skip:
                continue
            exp_id = item["id"]
            info = await self._call(creds, lambda api, i=exp_id: iotlab_experiment.get_experiment(api, i))
            if list(info.get("nodes") or []) == [address]:
                return int(exp_id)
        return None

    def _record(self, ctx: StepContext, exp_id: int, creds: Mapping[str, str]) -> None:
        ctx.state["experiment_id"] = exp_id
        ctx.state["experiments"] = [*ctx.state.get("experiments", []), exp_id]
        ctx.state["login"] = creds["user"]
        ctx.state["exp_state"] = ""

    async def submit(self, ctx: StepContext) -> None:
        """Submit the experiment (or reload the previous one on redeploy). Idempotent: an id already
        recorded by this step, or an experiment of ours found by name, is kept."""
        if ctx.state.get("experiment_id"):
            return
        creds = self._credentials(ctx)
        reload_id = ctx.state.get("previous_id") if ctx.process == "redeploy" else None
        epoch, minutes = self._timing(ctx)
        name, address = experiment_name(self.site, ctx.reservation), node_address(self.site, ctx.reservation)
        firmware = self._firmware_path(ctx)
        profile = str(ctx.params.get("profile") or "") or None
        if ctx.params.get("energy") and not reload_id:
            profile = await self.energy.prepare(ctx, creds, str(ctx.node.properties.get("model") or ""))

        def submit(api: SiteApi) -> Any:
            resources = [
                iotlab_experiment.exp_resources([address], str(firmware) if firmware else None, profile)
            ]
            return iotlab_experiment.submit_experiment(api, name, minutes, resources, epoch)

        def reload(api: SiteApi) -> Any:
            return iotlab_experiment.reload_experiment(api, reload_id, duration=minutes, start_time=epoch)

        what = f"reload of experiment {reload_id}" if reload_id else "experiment"
        last: Exception | None = None
        for attempt in range(3):
            try:
                adopted = await self._adopt(ctx, creds)
                if adopted is not None:
                    self._record(ctx, adopted, creds)
                    await ctx.log(f"IoT-LAB experiment {adopted} found again (submitted before a restart)")
                    return
                answer = await self._call(creds, reload if reload_id else submit, retry=False)
                break
            except TransientError as exc:
                last = exc  # maybe accepted anyway: the next round looks for it before resubmitting
                await ctx.log(f"IoT-LAB API unavailable during the {what} ({exc}); trying again", "warning")
                await asyncio.sleep(self.client.backoff * (2**attempt))
            except RemoteError as exc:
                raise StepError(f"IoT-LAB refused the {what}: {exc.message}") from None
            except OSError as exc:
                raise StepError(f"cannot read the firmware file: {exc.strerror}") from None
        else:
            raise StepError(f"IoT-LAB API unavailable: {last}")
        exp_id = int(answer["id"])
        self._record(ctx, exp_id, creds)
        details = [f"{minutes} min", f"node {address}"]
        if epoch is not None:
            details.append(f"start {ctx.reservation.start:%Y-%m-%d %H:%M} UTC")
        if firmware is not None:
            details.append(f"firmware {firmware.name}")
        if profile:
            details.append(f"profile {profile}")
        verb = f"reloaded from {reload_id} as" if reload_id else "submitted:"
        await ctx.log(f"IoT-LAB experiment {verb} {exp_id} ({', '.join(details)})")
        await ctx.progress(100)

    async def running(self, ctx: StepContext) -> bool:
        exp_id = ctx.state.get("experiment_id")
        if not exp_id:
            raise StepError("no IoT-LAB experiment to follow")
        creds = self._credentials(ctx)
        try:
            info = await self._call(creds, lambda api: iotlab_experiment.get_experiment(api, exp_id))
        except TransientError:
            return False
        except RemoteError as exc:
            raise StepError(f"IoT-LAB experiment {exp_id}: {exc.message}") from None
        state = str(info.get("state") or "")
        if state != ctx.state.get("exp_state"):
            ctx.state["exp_state"] = state
            await ctx.log(f"IoT-LAB experiment {exp_id}: {state}")
        if state in PENDING:
            await ctx.progress(PROGRESS[state])
            return False
        if state == "Running":
            nodes = [n for n in info.get("nodes") or [] if isinstance(n, str)] or [
                node_address(self.site, ctx.reservation)
            ]
            ctx.connection.clear()
            ctx.connection.update(
                {
                    "site": self.site,
                    "nodes": nodes,
                    "experiment_id": exp_id,
                    "login": creds["user"],
                    # The site's SSH frontend, where the user's IoT-LAB tools run: the host and
                    # user a client logs in with (the users' API keeps no connection without one).
                    "host": f"{self.site}.iot-lab.info",
                    "user": creds["user"],
                    "ssh": f"ssh {creds['user']}@{self.site}.iot-lab.info",
                }
            )
            await ctx.progress(100)
            return True
        raise StepError(self._failure(exp_id, info))

    @staticmethod
    def _failure(exp_id: Any, info: Mapping[str, Any]) -> str:
        message = f"IoT-LAB experiment {exp_id} ended in state {info.get('state') or 'unknown'}"
        failed = (info.get("deploymentresults") or {}).get("1") or []
        if failed:
            message += f"; deployment failed on {', '.join(map(str, failed))}"
        reason = info.get("error") or info.get("message")
        if isinstance(reason, str) and reason:
            message += f": {reason}"
        return message

    async def reset(self, ctx: StepContext) -> None:
        exp_id = ctx.state.get("experiment_id")
        if not exp_id:
            raise StepError("no IoT-LAB experiment: deploy first")
        creds, address = self._credentials(ctx), node_address(self.site, ctx.reservation)
        try:
            result = await self._call(
                creds, lambda api: iotlab_node.node_command(api, "reset", exp_id, [address])
            )
        except RemoteError as exc:
            raise StepError(f"IoT-LAB refused to reset {address}: {exc.message}") from None
        except TransientError as exc:
            raise StepError(str(exc)) from None
        if address not in ((result or {}).get("0") or []):
            raise StepError(f"IoT-LAB could not reset {address}: {result}")
        await ctx.log(f"{address} reset")

    async def clean_up(self, ctx: StepContext) -> None:
        self.firmwares.remove_uploads(ctx.reservation.id)
        ctx.connection.clear()

    async def noop(self, ctx: StepContext) -> None:
        return None

    def processes(self) -> dict[str, Process]:
        t = self.config.timeout_scale
        poll = self.config.poll_interval
        release = Step(
            "release",
            run=self.release,
            done=self.released,
            label="Stop the current experiment",
            fail_after=600 * t,
            poll=poll,
        )
        submit = Step("submit", run=self.submit, label="Submit the experiment", fail_after=300 * t)
        reload = Step("reload", run=self.submit, label="Reload the experiment", fail_after=300 * t)
        running = Step(
            "wait_running",
            run=self.noop,
            done=self.running,
            label="Wait for the experiment to run",
            fail_after=1800 * t,
            poll=poll,
            weight=4,
        )
        return {
            "deploy": Process("deploy", (release, submit, running)),
            "redeploy": Process("redeploy", (release, reload, running)),
            "reboot": Process(
                "reboot",
                (Step("reset", run=self.reset, label="Reset the node", fail_after=120 * t),),
            ),
            "destroy": Process(
                "destroy",
                (
                    release,
                    Step("read_energy", run=self.energy.collect, label="Read the energy measures",
                         fail_after=120 * t),
                    Step("clean_up", run=self.clean_up, label="Clean up"),
                ),
            ),
        }
