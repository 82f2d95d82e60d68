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


class FakeDriver(Driver):
    node_type = "raspberry"

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
            "deploy": Process("deploy", deploy, "deploying", "deployed"),
            "redeploy": Process("redeploy", deploy, "deploying", "deployed"),
            "reboot": Process("reboot", (simple("power_cycle"),), "deploying", "deployed"),
            "bootfiles": Process("bootfiles", (simple("copy_boot"),), "deploying", "deployed"),
            "destroy": Process("destroy", (simple("wipe"), simple("power_off")), "destroying", "ended"),
        }

    async def hard_reboot(self, ctx: StepContext) -> None:
        _record(ctx, "hard_reboot")
        ctx.state["hard_reboots"] = int(ctx.state.get("hard_reboots", 0)) + 1
