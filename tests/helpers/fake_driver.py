"""A controllable driver for the API and engine tests (never shipped).

Each node's behaviour comes from its `attrs` in the database, so it works across processes:
  behavior: "ok" (default) | "hang" (a step never finishes) | "raise" (a step raises StepError)
            | "crash" (a step raises an unexpected RuntimeError)
            | "need_reboot" (a step finishes only after a hard reboot) | "never_boot"
  behavior_step: the step the behaviour applies to (default "boot")
  step_delay: seconds each run() sleeps (default 0)
Every run() appends "<node> <process> <step>" to the file named by the config key `fake_log`
(when set), so tests can count executions across executors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from piseduce.agent.drivers.base import (
    BookingRefused,
    Driver,
    FormField,
    InvalidParams,
    Process,
    ReservationView,
    Step,
    StepContext,
    StepError,
)
from piseduce.protocol import CredentialKind, Feature


def _record(ctx: StepContext, step: str) -> None:
    path = (ctx.config.model_extra or {}).get("fake_log")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.node.name} {ctx.process} {step}\n".encode())
        finally:
            os.close(fd)


def _behaves(ctx: StepContext, step: str) -> str:
    if ctx.node.attrs.get("behavior_step", "boot") != step:
        return "ok"
    return str(ctx.node.attrs.get("behavior", "ok"))


def simple(name: str, **kw: Any) -> Step:
    async def run(ctx: StepContext) -> None:
        _record(ctx, name)
        delay = float(ctx.node.attrs.get("step_delay", 0))
        if delay:
            await asyncio.sleep(delay)
        if _behaves(ctx, name) == "raise":
            raise StepError(f"{name} broke on {ctx.node.name}")
        if _behaves(ctx, name) == "crash":
            raise RuntimeError(f"unexpected crash on {ctx.node.name}")
        await ctx.progress(100)

    async def done(ctx: StepContext) -> bool:
        b = _behaves(ctx, name)
        if b in ("hang", "never_boot"):
            return False
        if b == "need_reboot":
            return int(ctx.state.get("hard_reboots", 0)) > 0
        return True

    return Step(name=name, run=run, done=done, poll=0.05, **kw)


async def _set_connection(ctx: StepContext) -> None:
    _record(ctx, "connect")
    ctx.connection.update({"ssh": f"ssh root@{ctx.node.name}", "host": ctx.node.ip or ctx.node.name})
    # A test's SSH server playing the node (tests/pisctl_helpers.py's SshNode): where it listens
    # and the host key the agent pins, as the raspberry driver reports them.
    a = ctx.node.attrs
    if a.get("ssh_port"):
        ctx.connection.update({"host": a.get("ssh_host", "127.0.0.1"), "port": int(a["ssh_port"]),
                               "user": a.get("ssh_user", "root"), "host_key": a.get("host_key", "")})


# What a fake configured as a testbed's agent advertises (the web UI tests' "g5k" agents).
TESTBED_CREDENTIALS: dict[str, CredentialKind] = {"g5k": "g5k", "iot-lab": "iotlab"}


class FakeDriver(Driver):
    node_type = "raspberry"

    def __init__(self, config: Any, sessions: Any) -> None:
        super().__init__(config, sessions)
        # Configured with node_type g5k or iot-lab, it stands in for that testbed's agent: it
        # forwards the user's login of that testbed and its nodes are not the admins' to register.
        self.credential_kind = TESTBED_CREDENTIALS.get(config.node_type, "none")  # type: ignore[misc]

    def features(self, processes: Mapping[str, Process]) -> frozenset[Feature]:
        out = super().features(processes)
        return out - {Feature.NODE_REGISTRY} if self.config.node_type in TESTBED_CREDENTIALS else out

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        return [
            FormField(
                name="environment", label="Environment", kind="select", choices=["tiny", "big"], required=True
            ),
            FormField(name="ssh_keys", label="SSH keys", kind="ssh_keys"),
        ]

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        if params.get("environment") not in ("tiny", "big"):
            raise InvalidParams("environment", "choose one of tiny, big")
        return {"environment": params["environment"], "ssh_keys": list(params.get("ssh_keys") or [])}

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        for r in reservations:
            if r.node.attrs.get("refuse_booking"):
                raise BookingRefused(f"remote side refused {r.node.name}")
        return {r.id: {"booked_at": dt.datetime.now(dt.UTC).isoformat()} for r in reservations}

    def processes(self) -> dict[str, Process]:
        t = self.config.timeout_scale
        deploy = (
            simple("prepare"),
            simple("boot", reboot_after=2.0 * t, fail_after=4.0 * t),
            simple("install", fail_after=30.0 * t),
            Step(name="connect", run=_set_connection),
        )
        return {
            "deploy": Process("deploy", deploy),
            "redeploy": Process("redeploy", deploy),
            "reboot": Process("reboot", (simple("power_cycle"),)),
            "bootfiles": Process("bootfiles", (simple("copy_boot"),)),
            "destroy": Process("destroy", (simple("wipe"), simple("power_off"))),
        }

    async def hard_reboot(self, ctx: StepContext) -> None:
        _record(ctx, "hard_reboot")
        ctx.state["hard_reboots"] = int(ctx.state.get("hard_reboots", 0)) + 1


class PasswordDriver(FakeDriver):
    """Like the raspberry driver, its deploy form carries an OS password that the `install` step
    needs: the step appends the password's SHA-256 to `fake_log` (never the password itself)."""

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        out = await super().validate_deploy(reservation, params, credentials)
        out["os_password"] = str(params.get("os_password") or "")
        return out

    def processes(self) -> dict[str, Process]:
        procs = super().processes()

        async def install(ctx: StepContext) -> None:
            digest = hashlib.sha256(str(ctx.params.get("os_password", "")).encode()).hexdigest()
            _record(ctx, f"install sha256={digest}")

        deploy = tuple(Step(name="install", run=install) if s.name == "install" else s
                       for s in procs["deploy"].steps)
        procs["deploy"] = Process("deploy", deploy)
        return procs


class G5kFormDriver(FakeDriver):
    """A fake driver whose deploy form says what the g5k driver's says (its long help URL)."""

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        from piseduce.agent.drivers.g5k.form import ENVIRONMENT_HELP

        fields = await super().deploy_form(reservation, credentials)
        return [f.model_copy(update={"help": ENVIRONMENT_HELP}) if f.name == "environment" else f
                for f in fields]


class FirmwareFormDriver(FakeDriver):
    """A fake driver whose deploy form is the IoT-LAB driver's shape (a firmware uploaded as a
    file field, base64, its name alongside): with a FakeDriver agent it makes a mixed bin whose
    forms have different fields. The install step records the firmware's SHA-256 and name."""

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        return [
            FormField(name="firmware", label="Firmware", kind="select", choices=["", "tutorial"], default=""),
            FormField(name="firmware_file", label="Or upload your firmware", kind="file"),
            FormField(name="firmware_file_name", label="Uploaded firmware file name", kind="text"),
        ]

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        import base64
        import binascii

        upload = str(params.get("firmware_file") or "")
        if not upload and not params.get("firmware"):
            raise InvalidParams("firmware_file", "choose a firmware or upload one")
        try:
            data = base64.b64decode(upload, validate=True)
        except binascii.Error:
            raise InvalidParams("firmware_file", "the uploaded firmware must be base64-encoded") from None
        return {
            "firmware": str(params.get("firmware") or ""),
            "firmware_sha256": hashlib.sha256(data).hexdigest(),
            "firmware_file_name": str(params.get("firmware_file_name") or ""),
        }

    def processes(self) -> dict[str, Process]:
        procs = super().processes()

        async def install(ctx: StepContext) -> None:
            sha, name = ctx.params.get("firmware_sha256"), ctx.params.get("firmware_file_name")
            _record(ctx, f"flash sha256={sha} name={name}")

        deploy = tuple(Step(name="install", run=install) if s.name == "install" else s
                       for s in procs["deploy"].steps)
        procs["deploy"] = Process("deploy", deploy)
        return procs
