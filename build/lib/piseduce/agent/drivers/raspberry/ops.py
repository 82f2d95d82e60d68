"""What the raspberry steps share (`RpiOps`): the configuration and its scaled timeouts, the board
and its switch as the database describes them, the agent's SSH key and connections to the board's
systems, and the board's PoE power (through the one power component, power.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.clock import SYSTEM, Clock
from piseduce.agent.drivers.base import StepContext, StepError
from piseduce.agent.drivers.raspberry import recovery
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.imaging import EnvInfo
from piseduce.agent.drivers.raspberry.power import PoePower, PowerError, RetryPolicy
from piseduce.agent.drivers.raspberry.snmp import SnmpClient, SwitchInfo
from piseduce.agent.drivers.raspberry.switch_secrets import SecretsUnavailable, SwitchKeyring
from piseduce.agent.models import Environment, Switch
from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

NFS_HOSTNAME = "nfspi"
PART_SIZES = ("whole", "2gb", "5gb", "10gb")
T = TypeVar("T")

# (reboot_after, fail_after) in seconds of real hardware; fail_after counts again after the reboot.
# write_image and verify have budgets that follow the image size instead (imaging.py, card.py).
TIMEOUTS: dict[str, tuple[float | None, float | None]] = {
    "boot_nfs": (None, 60),
    "power_cycle": (None, 90),
    "wait_nfs": (150, 300),
    "write_image": (None, 3600),
    "verify": (None, 60),
    "partition": (None, 600),
    "configure": (None, 180),
    "boot_deployed": (None, 300),
    "reboot": (None, 90),
    "wait_deployed": (150, 300),
    "check_login": (None, 180),
    "wipe": (None, 600),
    "remove_boot": (None, 60),
    "power_off": (None, 60),
}
BOOT_WAITS = ("wait_nfs", "wait_deployed")
MIN_WORK_SECONDS = 300.0


@dataclass(frozen=True)
class Board:
    name: str
    ip: str
    ssh_port: int
    serial: str
    switch: str
    port: int


class RpiOps:
    """What the steps share: configuration, SNMP client, the agent's key and database reads."""

    def __init__(
        self, config: AgentConfig, sessions: sessionmaker[Session], snmp: SnmpClient,
        keyring: SwitchKeyring | None = None, clock: Clock = SYSTEM,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.snmp = snmp
        self.clock = clock
        # A step's power request is repeated when the switch does not answer: UDP gets lost, a
        # busy switch answers late. The step's own timeout bounds the whole.
        self.power_port = PoePower(snmp, RetryPolicy(attempts=4, pause=self.pause), clock)
        self.keyring = keyring or SwitchKeyring(config.key_path)
        self._agent_key: asyncssh.SSHKey | None = None

    # -- configuration

    @property
    def scale(self) -> float:
        return self.config.timeout_scale

    @property
    def tftp_root(self) -> Path:
        return self.config.tftp_dir

    @property
    def nfs_root(self) -> Path:
        return self.config.resolve(self.config.nfs_root)

    @property
    def env_dir(self) -> Path:
        return self.config.env_dir

    @property
    def connect_timeout(self) -> float:
        # Not scaled down below 15 s: a loaded board (or simulator) answers slowly, never faster.
        return max(15.0, 15.0 * self.scale)

    @property
    def command_timeout(self) -> float:
        """For quick commands (hostname, whoami)."""
        return max(30.0, 30.0 * self.scale)

    @property
    def pause(self) -> float:
        """Time between PoE off and on (the board's capacitors drain in about 2 s)."""
        return max(0.05, 2.0 * self.scale)

    @property
    def poll(self) -> float:
        """Between two looks at a booting board."""
        return max(0.05, min(3.0, 3.0 * self.scale))

    @property
    def boot_wait(self) -> float:
        """How long a board may take to boot before it is power-cycled (as in `wait_nfs`)."""
        return float(TIMEOUTS["wait_nfs"][0] or 150) * self.scale

    @property
    def agent_key(self) -> asyncssh.SSHKey:
        if self._agent_key is None:
            self._agent_key = sshc.load_or_create_agent_key(self.config.resolve(self.config.ssh_key_file))
        return self._agent_key

    @property
    def agent_pubkey(self) -> str:
        return sshc.public_key_line(self.agent_key)

    # -- database reads (short, read-only)

    def board(self, ctx: StepContext) -> Board:
        node = ctx.node
        info: dict[str, Any] = {**node.properties, **node.attrs}
        missing = [k for k in ("switch", "port", "serial") if info.get(k) in (None, "")]
        if missing:
            raise StepError(f"node {node.name} is not fully registered: missing {', '.join(missing)}")
        try:
            port = int(info["port"])
            ssh_port = int(info.get("ssh_port") or 22)
        except (TypeError, ValueError):
            raise StepError(f"node {node.name}: port and ssh_port must be numbers") from None
        ip = node.ip or str(info.get("ip") or "")
        if not ip:
            raise StepError(f"node {node.name} has no IP address")
        return Board(
            name=node.name,
            ip=ip,
            ssh_port=ssh_port,
            serial=str(info["serial"]),
            switch=str(info["switch"]),
            port=port,
        )

    def switch(self, name: str) -> SwitchInfo:
        with self.sessions() as s:
            row = s.get(Switch, name)
            if row is None:
                raise StepError(f"switch {name!r} is not registered")
            try:
                return self.keyring.info(row)
            except SecretsUnavailable as exc:
                raise StepError(str(exc)) from None

    def environment(self, name: str) -> EnvInfo:
        with self.sessions() as s:
            row = s.get(Environment, name)
            if row is None:
                raise StepError(f"environment {name!r} does not exist (any more)")
            return EnvInfo(row.name, row.image, row.size, row.ssh_user, row.checksum, row.state)

    # -- power

    async def power(self, ctx: StepContext, on: bool) -> None:
        b = self.board(ctx)
        try:
            await self.power_port.set(self.switch(b.switch), b.port, on, b.name)
        except PowerError as exc:
            raise StepError(str(exc)) from None

    async def power_cycle(self, ctx: StepContext) -> None:
        b = self.board(ctx)
        try:
            await self.power_port.cycle(self.switch(b.switch), b.port, self.pause, b.name)
        except PowerError as exc:
            raise StepError(str(exc)) from None

    async def port_is_off(self, ctx: StepContext) -> bool:
        """True only when the switch says the board's port is off."""
        b = self.board(ctx)
        try:
            return await self.power_port.status(self.switch(b.switch), b.port) == "off"
        except PowerError:
            return False

    # -- SSH

    def nfs_pin(self, ctx: StepContext) -> str:
        # `host_key` given when the node was registered is the key of the netboot system, the only
        # one known in advance (each deployment brings its own keys).
        return str(ctx.node.attrs.get("nfs_host_key") or ctx.node.attrs.get("host_key") or "")

    def deployed_pin(self, ctx: StepContext) -> str:
        return str(ctx.state.get("host_key") or "")

    async def nfs_connection(self, ctx: StepContext) -> asyncssh.SSHClientConnection:
        """A connection to the board's netboot system, whose key must be pinned by now."""
        b = self.board(ctx)
        pinned = self.nfs_pin(ctx)
        if not pinned:
            raise StepError(f"no pinned host key for the netboot system of {b.name}")
        conn, _ = await self._connect(self.target(b, "root", pinned))
        return conn

    def target(self, b: Board, user: str, pinned: str | None) -> sshc.Target:
        return sshc.Target(b.ip, b.ssh_port, user, self.agent_key, pinned=pinned or None,
                           timeout=self.connect_timeout)

    async def _connect(self, target: sshc.Target) -> tuple[asyncssh.SSHClientConnection, str]:
        try:
            return await sshc.connect(target)
        except sshc.HostKeyMismatch as exc:
            raise StepError(str(exc)) from None

    async def retrying(self, what: str, fn: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
        """Retry on a dropped SSH connection (wifi-less boards drop too); helper errors are final."""
        for i in range(attempts):
            try:
                return await fn()
            except sshc.SSHUnavailable as exc:
                if i == attempts - 1:
                    raise StepError(f"{what}: SSH failed {attempts} times, last: {exc}") from None
                log.info("%s: SSH dropped (%s), retrying", what, exc)
                await asyncio.sleep(self.pause * (i + 1))
            except sshc.NodeCommandError as exc:
                raise StepError(f"{what}: {exc}") from None
        raise StepError(f"{what}: failed")  # unreachable: the loop returns or raises

    async def on_nfs(self, ctx: StepContext, what: str, fn: Callable[[asyncssh.SSHClientConnection],
                                                                     Awaitable[T]]) -> T:
        """`fn` on the netboot system; a lost connection or power loss is recovered (recovery.py)."""
        return await recovery.on_nfs(self, ctx, what, fn)

    async def probe(
        self, ctx: StepContext, target: sshc.Target, *, other_pins: tuple[str, ...]
    ) -> tuple[str, str] | None:
        """Try one login: (hostname, offered key) or None when the system is not up (yet).
        A key that is another known system's of this board means that system is still up."""
        try:
            conn, offered = await sshc.connect(target)
        except sshc.SSHUnavailable:
            return None
        except sshc.HostKeyMismatch as exc:
            if exc.offered and any(p and sshc.same_key(exc.offered, p) for p in other_pins):
                return None
            raise StepError(str(exc)) from None
        try:
            async with conn:
                res = await sshc.run(conn, ["hostname"], timeout=self.command_timeout)
        except (sshc.SSHUnavailable, sshc.NodeCommandError):
            return None
        return res.stdout.strip(), offered
