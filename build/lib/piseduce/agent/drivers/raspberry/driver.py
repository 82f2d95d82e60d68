"""The raspberry driver: Raspberry Pi boards on PoE switch ports, netbooted from this host."""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from piseduce import snmp_budget
from piseduce.agent.drivers.base import (
    Driver,
    FormField,
    InvalidParams,
    Process,
    ReservationView,
    StepContext,
)
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.defaults import default_environment
from piseduce.agent.drivers.raspberry.detect import Detection
from piseduce.agent.drivers.raspberry.monitoring import sample_boards
from piseduce.agent.drivers.raspberry.ops import PART_SIZES, RpiOps
from piseduce.agent.drivers.raspberry.power import PoePower
from piseduce.agent.drivers.raspberry.register_env import register_env_process, secure_saved_images
from piseduce.agent.drivers.raspberry.snmp import SnmpClient
from piseduce.agent.drivers.raspberry.steps import build_processes, make_steps
from piseduce.agent.drivers.raspberry.switch_identity import warn_duplicates
from piseduce.agent.drivers.raspberry.switch_secrets import SwitchKeyring, seal_clear_communities
from piseduce.agent.models import Environment
from piseduce.protocol import Feature

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy.orm import Session, sessionmaker

    from piseduce.config import AgentConfig

MAX_KEYS = 32
PASSWORD_MIN = 8
PASSWORD_MAX = 128


def generate_password(length: int = 16) -> str:
    # Letters and digits only: easy to type on a console, and 16 of them give ~95 bits.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def normalise_keys(value: Any) -> list[str]:
    """The `ssh_keys` field: a list of strings, each holding one or more OpenSSH public keys."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParams("ssh_keys", "expected a list of OpenSSH public keys")
    keys: list[str] = []
    for block in value:
        for line in block.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                sshc.parse_public_key(line)
            except ValueError as exc:
                raise InvalidParams("ssh_keys", f"{line[:30]}…: {exc}") from None
            if line not in keys:
                keys.append(line)
    if len(keys) > MAX_KEYS:
        raise InvalidParams("ssh_keys", f"at most {MAX_KEYS} keys")
    return keys


def check_password(value: Any) -> str:
    if value is None or value == "":
        return generate_password()
    if not isinstance(value, str):
        raise InvalidParams("os_password", "expected a string")
    if not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise InvalidParams("os_password", f"between {PASSWORD_MIN} and {PASSWORD_MAX} characters")
    if any(not ch.isprintable() for ch in value):
        raise InvalidParams("os_password", "control characters are not allowed")
    return value


class RaspberryDriver(Driver):
    node_type = "raspberry"
    labels = {"nodes": "Raspberry Pi"}
    declared_features = frozenset({Feature.EXTEND, Feature.MONITORING, Feature.POWER, Feature.ENVIRONMENTS})

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session]) -> None:
        super().__init__(config, sessions)
        # Network latency does not follow the simulated clock: the SNMP timeout is not scaled.
        self.snmp = SnmpClient(timeout=snmp_budget.REQUEST_TIMEOUT_S, retries=snmp_budget.RETRIES)
        # The administrators' port routes and the sampler: one try each (the steps retry, ops.py).
        self.power = PoePower(self.snmp)
        self.keyring = SwitchKeyring(config.key_path)
        seal_clear_communities(sessions, self.keyring)
        secure_saved_images(sessions, config.env_dir)
        warn_duplicates(sessions)
        self.ops = RpiOps(config, sessions, self.snmp, self.keyring)
        self._processes: dict[str, Process] | None = None
        # Node detection jobs (admin_detect.py), kept for the page while this process runs.
        self.detections: dict[str, Detection] = {}
        self.detection_tasks: set[asyncio.Task[None]] = set()

    # -- the deploy form

    def _environments(self, owner: str) -> list[Environment]:
        with self.sessions() as s:
            rows = s.scalars(
                select(Environment)
                .where(Environment.state == "available")
                .where(or_(Environment.owner == "", Environment.owner == owner))
                .order_by(Environment.name)
            ).all()
            return list(rows)

    async def deploy_form(
        self, reservation: ReservationView, credentials: Mapping[str, str] | None
    ) -> list[FormField]:
        envs = self._environments(reservation.owner)
        preselected = default_environment(envs)
        return [
            FormField(
                name="environment",
                label="Environment",
                kind="select",
                choices=[e.name for e in envs],
                required=True,
                help="The operating system written to the board's SD card",
                default=preselected.name if preselected else None,
            ),
            FormField(
                name="part_size",
                label="Root partition size",
                kind="select",
                choices=list(PART_SIZES),
                default="whole",
                help="'whole' grows the system partition over the whole card",
            ),
            FormField(
                name="os_password",
                label="OS password",
                kind="password",
                # What the deployed system does: sshd takes it for the environment's user; root
                # (PermitRootLogin prohibit-password) logs in with the keys only over SSH.
                help="SSH password of the environment's user (pi, ubuntu); root logs in over SSH with "
                "your keys only; generated when left empty",
            ),
            FormField(
                name="ssh_keys",
                label="SSH public keys",
                kind="ssh_keys",
                help="OpenSSH public keys (ed25519, rsa, ecdsa...), one per line",
            ),
        ]

    async def validate_deploy(
        self, reservation: ReservationView, params: dict[str, Any], credentials: Mapping[str, str] | None
    ) -> dict[str, Any]:
        env_name = params.get("environment")
        if not isinstance(env_name, str) or not env_name:
            raise InvalidParams("environment", "choose an environment")
        names = {e.name for e in self._environments(reservation.owner)}
        if env_name not in names:
            raise InvalidParams("environment", f"unknown or unavailable environment {env_name[:64]!r}")
        part_size = params.get("part_size") or "whole"
        if part_size not in PART_SIZES:
            raise InvalidParams("part_size", f"one of {', '.join(PART_SIZES)}")
        return {
            "environment": env_name,
            "part_size": part_size,
            "os_password": check_password(params.get("os_password")),
            "ssh_keys": normalise_keys(params.get("ssh_keys")),
        }

    # -- processes

    def processes(self) -> dict[str, Process]:
        if self._processes is None:
            self._processes = build_processes(self.ops)
            # The environment factory (register_env.py) reuses the netboot and boot-file steps.
            self._processes["register_env"] = register_env_process(self.ops, make_steps(self.ops))
        return self._processes

    async def hard_reboot(self, ctx: StepContext) -> None:
        await ctx.log(f"hard reboot of {ctx.node.name} (PoE off, then on)", "warning")
        await self.ops.power_cycle(ctx)

    def admin_router(self) -> APIRouter | None:
        # Imported here: the executor loads this driver too and needs none of the API.
        from piseduce.agent.drivers.raspberry.admin import router

        return router

    sample = sample_boards  # power over SNMP, temperature over SSH (monitoring.py)

    async def close(self) -> None:
        for task in list(self.detection_tasks):
            task.cancel()
        if self.detection_tasks:
            await asyncio.wait(self.detection_tasks, timeout=5)
        self.snmp.close()
