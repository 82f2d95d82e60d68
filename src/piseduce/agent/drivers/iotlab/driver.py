"""The `iot-lab` driver: sensors of one FIT IoT-LAB site, driven through iotlabcli's Python API.

A booking only lands in PiSeduce's calendar (after checking the user's credentials and that no other
user's experiment holds the node). Deploying submits one experiment per reservation, on the reserved
node only, for what remains of the reservation, with the chosen firmware and monitoring profile, and
follows its states to Running; destroying stops that experiment; redeploying reloads it. Each
reservation knows its own experiment id, so no action ever touches another reservation's experiment.

`driver_state` keys: `experiment_id` (the current experiment or None), `previous_id` (the one just
released, which a redeploy reloads), `experiments` (every id, oldest first), `exp_state` (last seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotlabcli import experiment as iotlab_experiment
from iotlabcli import node as iotlab_node

from piseduce.agent.drivers.base import (
    ActionRefused,
    BookingRefused,
    BusyInterval,
    CredentialsRequired,
    Driver,
    FormField,
    InvalidParams,
    NodeSpec,
    Process,
    ReservationView,
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
from piseduce.agent.drivers.iotlab.firmware import FirmwareStore, check_name

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig

PENDING = ("Waiting", "toLaunch", "Launching")
LIVE = (*PENDING, "Running")  # the experiment holds (or will hold) its nodes
FINAL = ("Terminated", "Stopped", "Error")
PROGRESS = {"Waiting": 10, "toLaunch": 30, "Launching": 60, "Running": 100}
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADDRESS = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*-\d+\.[a-z0-9-]+\.iot-lab\.info$")
RUNNING_CACHE_SECONDS = 10.0
INVENTORY_BURST_SECONDS = 5.0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_date(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class CredentialsFailed(StepError):
    """A step could not act because the user's IoT-LAB credentials are missing or refused."""


class IotlabDriver(Driver):
    node_type = "iot-lab"
    needs_credentials = True
    remote_inventory = True

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        super().__init__(config, sessions)
        self.site = config.iot_site
        self.client = Client(config.iotlab_api_url)
        self.firmwares = FirmwareStore(config.firmware_dir)
        self._inventory: list[NodeSpec] | None = None
        self._inventory_at = -math.inf
        self._running_cache: list[dict[str, Any]] | None = None
        self._running_cache_at = -math.inf

    # ------------------------------------------------------------------ naming

    def experiment_name(self, reservation: ReservationView) -> str:
        # The name lets a resumed executor find an experiment it submitted just before dying.
        return f"piseduce_{self.site}_r{reservation.id}"

    def address(self, reservation: ReservationView) -> str:
        address = str(
            reservation.node.attrs.get("network_address")
            or f"{reservation.node.name}.{self.site}.iot-lab.info"
        )
        if not ADDRESS.fullmatch(address):
            raise StepError(f"{reservation.node.name} has no valid IoT-LAB network address ({address!r})")
        return address

    def short_name(self, address: str) -> str:
        return address.split(".", 1)[0]

    # ------------------------------------------------------------------ inventory and availability

    async def sync_nodes(self, credentials: Mapping[str, str] | None = None) -> list[NodeSpec] | None:
        """The site's Alive and Busy nodes. The agent's inventory already refreshes only every
        `inventory_refresh_seconds`, so the list is kept here only briefly (to absorb bursts) and
        as a fallback: without credentials an anonymous request is tried, and when the API refuses
        or fails the last list is served."""
        fresh_for = min(INVENTORY_BURST_SECONDS, self.config.inventory_refresh_seconds)
        if self._inventory is not None and time.monotonic() - self._inventory_at < fresh_for:
            return list(self._inventory)
        site = self.site
        try:
            answer = await self.client.call(
                credentials, lambda api: api.get_nodes(site=site), anonymous=not credentials
            )
        except (CredentialsRequired, TransientError):
            if self._inventory is not None:
                return list(self._inventory)
            raise
        specs = [self._node_spec(item) for item in (answer or {}).get("items", [])]
        self._inventory = [s for s in specs if s is not None]
        self._inventory_at = time.monotonic()
        return list(self._inventory)

    def _node_spec(self, item: Any) -> NodeSpec | None:
        if not isinstance(item, dict) or item.get("state") not in ("Alive", "Busy"):
            return None
        address = str(item.get("network_address") or "")
        if not ADDRESS.fullmatch(address) or item.get("site", self.site) != self.site:
            return None
        archi = str(item.get("archi") or "")
        model, _, radio = archi.partition(":")
        properties: dict[str, Any] = {"archi": archi, "model": model, "radio": radio, "site": self.site}
        properties["mobile"] = bool(int(item.get("mobile") or 0))
        for axis in ("x", "y", "z"):
            value = _as_float(item.get(axis))
            if value is not None:
                properties[axis] = value
        return NodeSpec(
            name=self.short_name(address),
            status="available",
            properties=properties,
            attrs={
                "network_address": address,
                "uid": str(item.get("uid") or ""),
                "iotlab_state": item["state"],
            },
        )

    async def _running_experiments(self, credentials: Mapping[str, str]) -> list[dict[str, Any]]:
        if (
            self._running_cache is not None
            and time.monotonic() - self._running_cache_at < RUNNING_CACHE_SECONDS
        ):
            return self._running_cache
        try:
            answer = await self.client.call(credentials, lambda api: api.get_running_experiments())
        except TransientError:
            return self._running_cache or []
        self._running_cache = [i for i in (answer or {}).get("items", []) if isinstance(i, dict)]
        self._running_cache_at = time.monotonic()
        return self._running_cache

    async def remote_busy(
        self, start: dt.datetime, end: dt.datetime, credentials: Mapping[str, str] | None = None
    ) -> list[BusyInterval]:
        """Nodes held by experiments not submitted by this agent (other users' experiments, or the
        user's own outside PiSeduce), clipped to [start, end). Invisible without credentials."""
        if not credentials:
            return []
        now = _utcnow()
        ours = f"piseduce_{self.site}_r"
        suffix = f".{self.site}.iot-lab.info"
        busy: list[BusyInterval] = []
        for item in await self._running_experiments(credentials):
            if str(item.get("name") or "").startswith(ours) or item.get("state") not in LIVE:
                continue
            started = _parse_date(item.get("start_date"))
            if started is not None and item.get("state") == "Running":
                begin = started
            else:
                # Not started yet: it runs from its scheduled date, or as soon as possible (now).
                begin = max(_parse_date(item.get("scheduled_date")) or now, now)
            finish = begin + dt.timedelta(minutes=_as_float(item.get("submitted_duration")) or 0.0)
            if finish <= start or begin >= end:
                continue
            reason = f"IoT-LAB experiment {item.get('id')} (outside PiSeduce)"
            for address in item.get("nodes") or []:
                if isinstance(address, str) and address.endswith(suffix):
                    busy.append(
                        BusyInterval(self.short_name(address), max(begin, start), min(finish, end), reason)
                    )
        return busy

    # ------------------------------------------------------------------ booking hooks

    async def _check_credentials(self, credentials: Mapping[str, str] | None) -> None:
        if not await self.client.call(credentials, lambda api: api.check_credential()):
            raise CredentialsRequired("refused by the IoT-LAB API")

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        if not reservations:
            return {}
        await self._check_credentials(credentials)
        assert credentials is not None
        start = min(r.start for r in reservations)
        end = max(r.end for r in reservations)
        busy = await self.remote_busy(start, end, credentials)
        for r in reservations:
            for b in busy:
                if b.node == r.node.name and b.start < r.end and r.start < b.end:
                    raise BookingRefused(
                        f"{r.node.name} is busy on IoT-LAB until {b.end:%Y-%m-%d %H:%M} UTC ({b.reason})"
                    )
        return {r.id: {"experiments": []} for r in reservations}

    async def on_extend(
        self, reservation: ReservationView, new_end: dt.datetime, credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        if reservation.driver_state.get("experiment_id") and reservation.status in ("deploying", "deployed"):
            raise ActionRefused(
                "IoT-LAB cannot extend a submitted experiment: extend before deploying, or redeploy after"
            )
        return {}

    async def on_cancel(self, reservation: ReservationView, credentials: Mapping[str, str] | None) -> None:
        exp_id = reservation.driver_state.get("experiment_id")
        self.firmwares.remove_uploads(reservation.id)
        if exp_id and credentials:
            try:
                info = await self.client.call(
                    credentials, lambda api: iotlab_experiment.get_experiment(api, exp_id)
                )
                if info.get("state") in LIVE:
                    await self.client.call(
                        credentials, lambda api: iotlab_experiment.stop_experiment(api, exp_id)
                    )
            except RemoteError:
                pass  # already gone

    # ------------------------------------------------------------------ deploy form

    def _model(self, reservation: ReservationView) -> str:
        return str(reservation.node.properties.get("model") or "")

    async def _profiles(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[str]:
        answer = await self.client.call(credentials, lambda api: api.get_profiles())
        model = self._model(reservation)
        names = []
        for p in answer or []:
            is_profile = isinstance(p, dict) and isinstance(p.get("profilename"), str)
            if is_profile and (not model or p.get("nodearch") in (None, model)):
                names.append(p["profilename"])
        return sorted(names)

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        try:
            profiles = await self._profiles(reservation, credentials)
            profile_help = "One of your IoT-LAB monitoring profiles (power, radio); empty for none."
        except (TransientError, RemoteError) as exc:
            profiles, profile_help = (
                [],
                f"Your monitoring profiles could not be read ({exc}); empty for none.",
            )
        return [
            FormField(
                name="firmware",
                label="Firmware",
                kind="select",
                choices=["", *self.firmwares.names()],
                help="A firmware of the agent's folder; empty keeps the node's default firmware.",
                default="",
            ),
            FormField(
                name="firmware_file",
                label="Or upload your firmware",
                kind="file",
                help="Your own .elf, .bin or .hex file (base64), used instead of the list.",
            ),
            FormField(
                name="firmware_file_name",
                label="Uploaded firmware file name",
                kind="text",
                help="The name of the uploaded file, e.g. my_app.elf.",
            ),
            FormField(
                name="profile",
                label="Monitoring profile",
                kind="select",
                choices=["", *profiles],
                help=profile_help,
                default="",
            ),
        ]

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        firmware = params.get("firmware") or ""
        upload = params.get("firmware_file") or ""
        upload_name = params.get("firmware_file_name") or ""
        profile = params.get("profile") or ""
        for key, value in (("firmware", firmware), ("firmware_file", upload), ("profile", profile)):
            if not isinstance(value, str):
                raise InvalidParams(key, "expected a string")
        if firmware and upload:
            raise InvalidParams("firmware_file", "choose a firmware from the list or upload one, not both")
        out: dict[str, Any] = {"firmware": "", "firmware_source": "", "profile": ""}
        if firmware:
            self.firmwares.path(firmware)  # raises InvalidParams for a bad or unknown name
            out.update(firmware=firmware, firmware_source="folder")
        elif upload:
            if not isinstance(upload_name, str) or not upload_name:
                raise InvalidParams("firmware_file_name", "give the uploaded firmware's file name")
            check_name("firmware_file_name", upload_name)
            self.firmwares.save_upload(reservation.id, upload_name, upload)
            out.update(firmware=upload_name, firmware_source="upload")
        if profile:
            if not PROFILE_NAME.fullmatch(profile):
                raise InvalidParams("profile", "a profile name is made of letters, digits, '_' and '-'")
            try:
                known = await self._profiles(reservation, credentials)
            except TransientError as exc:
                raise InvalidParams("profile", f"your profiles could not be checked now ({exc})") from None
            if profile not in known:
                raise InvalidParams(
                    "profile", f"no monitoring profile named {profile!r} for this node in your account"
                )
            out["profile"] = profile
        if not firmware and not upload:
            self.firmwares.remove_uploads(reservation.id)
        return out

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

    # ------------------------------------------------------------------ steps

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

    async def _release(self, ctx: StepContext) -> None:
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

    async def _released(self, ctx: StepContext) -> bool:
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
        now = _utcnow()
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
        name, address = self.experiment_name(ctx.reservation), self.address(ctx.reservation)
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

    async def _submit(self, ctx: StepContext) -> None:
        """Submit the experiment (or reload the previous one on redeploy). Idempotent: an id already
        recorded by this step, or an experiment of ours found by name, is kept."""
        if ctx.state.get("experiment_id"):
            return
        creds = self._credentials(ctx)
        reload_id = ctx.state.get("previous_id") if ctx.process == "redeploy" else None
        epoch, minutes = self._timing(ctx)
        name, address = self.experiment_name(ctx.reservation), self.address(ctx.reservation)
        firmware = self._firmware_path(ctx)
        profile = str(ctx.params.get("profile") or "") or None

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

    async def _running(self, ctx: StepContext) -> bool:
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
                self.address(ctx.reservation)
            ]
            ctx.connection.clear()
            ctx.connection.update(
                {
                    "site": self.site,
                    "nodes": nodes,
                    "experiment_id": exp_id,
                    "login": creds["user"],
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

    async def _reset(self, ctx: StepContext) -> None:
        exp_id = ctx.state.get("experiment_id")
        if not exp_id:
            raise StepError("no IoT-LAB experiment: deploy first")
        creds, address = self._credentials(ctx), self.address(ctx.reservation)
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

    async def _cleanup(self, ctx: StepContext) -> None:
        self.firmwares.remove_uploads(ctx.reservation.id)
        ctx.connection.clear()

    async def _noop(self, ctx: StepContext) -> None:
        return None

    def processes(self) -> dict[str, Process]:
        t = self.config.timeout_scale
        poll = self.config.poll_interval
        release = Step(
            "release",
            run=self._release,
            done=self._released,
            label="Stop the current experiment",
            fail_after=600 * t,
            poll=poll,
        )
        submit = Step("submit", run=self._submit, label="Submit the experiment", fail_after=300 * t)
        reload = Step("reload", run=self._submit, label="Reload the experiment", fail_after=300 * t)
        running = Step(
            "wait_running",
            run=self._noop,
            done=self._running,
            label="Wait for the experiment to run",
            fail_after=1800 * t,
            poll=poll,
            weight=4,
        )
        return {
            "deploy": Process("deploy", (release, submit, running), "deploying", "deployed"),
            "redeploy": Process("redeploy", (release, reload, running), "deploying", "deployed"),
            "reboot": Process(
                "reboot",
                (Step("reset", run=self._reset, label="Reset the node", fail_after=120 * t),),
                "deploying",
                "deployed",
            ),
            "destroy": Process(
                "destroy",
                (release, Step("cleanup", run=self._cleanup, label="Clean up")),
                "destroying",
                "ended",
            ),
        }

    # ------------------------------------------------------------------ data

    def user_router(self) -> APIRouter | None:
        # Imported here: the executor loads this driver too and needs none of the API.
        from piseduce.agent.drivers.iotlab.routes import build_router

        return build_router(self)

    async def download_data(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> bytes:
        """The experiment's archive (tar.gz: description and firmwares), fetched with the owner's
        credentials. The caller checks that the requester owns the reservation."""
        exp_id = reservation.driver_state.get("experiment_id") or reservation.driver_state.get("previous_id")
        if not exp_id:
            raise ActionRefused("no IoT-LAB experiment was submitted for this reservation")
        try:
            # Not experiment.get_experiment(..., "data"): that one writes the archive to the cwd.
            data = await self.client.call(credentials, lambda api: api.get_experiment_info(exp_id, "data"))
        except RemoteError as exc:
            raise ActionRefused(f"IoT-LAB refused the data of experiment {exp_id}: {exc.message}") from None
        return bytes(data)
