"""The raspberry processes as data: each step a small named async function over a `StepContext`.

deploy / redeploy: boot_nfs → power_cycle → wait_nfs → write_image → verify → partition →
    configure → boot_deployed → reboot → wait_deployed → user_config
destroy: boot_nfs → power_cycle → wait_nfs → wipe → remove_boot → power_off
reboot: reboot → wait_deployed
bootfiles: boot_nfs → power_cycle → wait_nfs → boot_deployed → reboot → wait_deployed
    (the board's boot partition can only be read from the netboot system: the deployed system
    belongs to the user and holds no helper, so the board is netbooted, its boot files exported
    again, then it reboots into its system.)

Every `run` can be called again after a crash: power cycles and folder swaps are repeatable, the
helper commands rewrite what they wrote. Timeouts are seconds of real hardware, multiplied by
`timeout_scale` here (the engine never rescales them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.drivers.base import Process, Step, StepContext, StepError
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry import tftp
from piseduce.agent.drivers.raspberry.snmp import MasterPortRefused, SnmpClient, SnmpError, SwitchInfo
from piseduce.agent.models import Environment, Switch
from piseduce.config import AgentConfig

log = logging.getLogger(__name__)

NFS_HOSTNAME = "nfspi"
PART_SIZES = ("whole", "2gb", "5gb", "10gb")
T = TypeVar("T")

# (reboot_after, fail_after) in seconds of real hardware; fail_after counts again after the reboot.
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
    "user_config": (None, 180),
    "wipe": (None, 600),
    "remove_boot": (None, 60),
    "power_off": (None, 60),
}
BOOT_WAITS = ("wait_nfs", "wait_deployed")
MIN_WORK_SECONDS = 300.0


def image_path(env_dir: Path, image: str) -> Path:
    """The image file of an environment; ValueError when the name leaves env_path."""
    if not image or "\0" in image:
        raise ValueError("image file name is empty")
    root = env_dir.resolve()
    path = (root / image).resolve()
    if path == root or not path.is_relative_to(root):
        raise ValueError(f"image {image!r} is outside env_path")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class EnvInfo:
    name: str
    image: str
    size: int
    ssh_user: str
    checksum: str
    state: str


@dataclass(frozen=True)
class Board:
    name: str
    ip: str
    ssh_port: int
    serial: str
    switch: str
    port: int


class Throttle:
    """Progress reports are database commits: send one only when the value moved enough."""

    def __init__(self, ctx: StepContext, step: int = 2, every: float = 1.0) -> None:
        self.ctx = ctx
        self.step = step
        self.every = every
        self.last = -100
        self.at = 0.0
        self.message = ""

    async def __call__(self, percent: int, message: str = "") -> None:
        percent = max(0, min(100, percent))
        now = time.monotonic()
        if percent >= 100 or (percent - self.last >= self.step and now - self.at >= self.every):
            self.last = percent
            self.at = now
            # A message becomes an event: only a new phase ("writing", "verifying") is worth one.
            fresh = message if message and message != self.message else None
            self.message = message or self.message
            await self.ctx.progress(percent, fresh)


class RpiOps:
    """What the steps share: configuration, SNMP client, the agent's key and database reads."""

    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session], snmp: SnmpClient) -> None:
        self.config = config
        self.sessions = sessions
        self.snmp = snmp
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
            return SwitchInfo.from_row(row)

    def environment(self, name: str) -> EnvInfo:
        with self.sessions() as s:
            row = s.get(Environment, name)
            if row is None:
                raise StepError(f"environment {name!r} does not exist (any more)")
            return EnvInfo(row.name, row.image, row.size, row.ssh_user, row.checksum, row.state)

    # -- power

    async def _snmp(self, what: str, call: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
        """An SNMP request, repeated when the switch does not answer: UDP gets lost, and a busy
        switch answers late; a SET repeated is harmless. The step's own timeout bounds the whole."""
        for i in range(attempts):
            try:
                return await call()
            except MasterPortRefused as exc:
                raise StepError(f"{what}: {exc}") from None
            except SnmpError as exc:
                if i == attempts - 1:
                    raise StepError(f"{what}: {exc}") from None
                log.info("%s: %s; trying again", what, exc)
                await asyncio.sleep(self.pause * (i + 1))
        raise StepError(f"{what}: failed")  # unreachable: the loop returns or raises

    async def power(self, ctx: StepContext, on: bool) -> None:
        b = self.board(ctx)
        sw = self.switch(b.switch)
        word = "on" if on else "off"
        # The SET's response says it was applied (SNMP sets are atomic): no read-back needed.
        await self._snmp(f"power {word} {b.name}", lambda: self.snmp.set_power(sw, b.port, on))

    async def power_cycle(self, ctx: StepContext) -> None:
        await self.power(ctx, False)
        await asyncio.sleep(self.pause)
        await self.power(ctx, True)

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
        async def attempt() -> T:
            conn = await self.nfs_connection(ctx)
            try:
                return await fn(conn)
            finally:
                conn.close()

        return await self.retrying(what, attempt)

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


# ---------------------------------------------------------------- steps


def make_steps(ops: RpiOps) -> dict[str, Step]:
    scale = ops.scale
    poll = max(0.05, min(3.0, 3.0 * scale))

    def step(name: str, run: Callable[[StepContext], Awaitable[None]], label: str, *,
             done: Callable[[StepContext], Awaitable[bool]] | None = None, weight: int = 1) -> Step:
        reboot_after, fail_after = TIMEOUTS[name]
        fail = fail_after * scale if fail_after is not None else None
        if fail is not None and name not in BOOT_WAITS:
            # Only boots follow the (simulated) clock; writing a card takes real time at any scale.
            fail = max(fail, MIN_WORK_SECONDS)
        return Step(
            name=name,
            run=run,
            done=done,
            label=label,
            reboot_after=reboot_after * scale if reboot_after is not None else None,
            fail_after=fail,
            poll=poll,
            weight=weight,
        )

    async def boot_nfs(ctx: StepContext) -> None:
        b = ops.board(ctx)
        await asyncio.to_thread(ensure_nfs_key, ops.nfs_root, ops.agent_pubkey)
        try:
            await asyncio.to_thread(tftp.set_nfs_boot, ops.tftp_root, b.serial)
        except tftp.BootFilesError as exc:
            raise StepError(str(exc)) from None

    async def power_cycle(ctx: StepContext) -> None:
        await ops.power_cycle(ctx)

    async def wait_nfs_run(ctx: StepContext) -> None:
        """Nothing to start: the power cycle did; `wait_nfs_done` polls."""

    async def wait_nfs_done(ctx: StepContext) -> bool:
        b = ops.board(ctx)
        pinned = ops.nfs_pin(ctx)
        target = ops.target(b, "root", pinned)
        seen = await ops.probe(ctx, target, other_pins=(ops.deployed_pin(ctx),
                                                         str(ctx.node.attrs.get("deployed_host_key") or "")))
        if seen is None:
            return False
        hostname, offered = seen
        if hostname != NFS_HOSTNAME:
            # Still the previous system (the power cycle did not take yet): not the one to pin.
            return False
        if not pinned:
            await ctx.save_node_attrs(nfs_host_key=offered)
            await ctx.log(
                f"pinned the host key of the netboot system of {b.name} on first use: "
                f"{sshc.fingerprint(offered)}",
                "warning",
            )
        await ctx.progress(100, "netboot system is up")
        return True

    async def write_image(ctx: StepContext) -> None:
        env = ops.environment(str(ctx.params.get("environment", "")))
        try:
            path = image_path(ops.env_dir, env.image)
        except ValueError as exc:
            raise StepError(f"environment {env.name}: {exc}") from None
        if not path.is_file():
            raise StepError(f"environment {env.name}: image file {env.image} is missing from env_path")
        # A new system brings new host keys: the previous deployment's pin no longer applies.
        ctx.state.pop("host_key", None)
        ctx.state.pop("write_result", None)
        checksum = env.checksum or await asyncio.to_thread(sha256_file, path)
        size = path.stat().st_size
        argv = ["piseduce-node", "write-image", "--sha256", checksum, "--size", str(size)]
        throttle = Throttle(ctx)
        await ctx.progress(0, f"writing {env.name}")

        async def attempt() -> dict[str, Any]:
            conn = await ops.nfs_connection(ctx)
            try:
                return await sshc.stream_file_to_helper(
                    conn, argv, path, on_progress=throttle, stall_timeout=max(30.0, 120.0 * scale)
                )
            finally:
                conn.close()

        result = await ops.retrying(f"write {env.name} on {ctx.node.name}", attempt)
        ctx.state["write_result"] = {
            "sha256": str(result.get("sha256", "")),
            "verified": result.get("verified") is True,
            "written": int(result.get("written") or 0),
            "expected": checksum,
        }
        await ctx.progress(100, f"{int(result.get('written') or 0) >> 20} MB written")

    async def verify(ctx: StepContext) -> None:
        res = ctx.state.get("write_result")
        if not isinstance(res, dict):
            raise StepError("no record of the image write: the deployment must start again")
        env = ops.environment(str(ctx.params.get("environment", "")))
        expected = (env.checksum or str(res.get("expected", ""))).lower()
        if not res.get("verified"):
            raise StepError("the board could not verify the image it wrote (card read-back differs)")
        if str(res.get("sha256", "")).lower() != expected:
            raise StepError(
                f"image checksum mismatch: the board received {res.get('sha256')}, "
                f"environment {env.name} has {expected}"
            )
        written = int(res.get("written") or 0)
        await ctx.log(f"image verified: sha256 {expected[:16]}…, {written} bytes on the card")

    async def partition(ctx: StepContext) -> None:
        size = str(ctx.params.get("part_size") or "whole")
        if size not in PART_SIZES:
            raise StepError(f"partition size {size!r} is not one of {', '.join(PART_SIZES)}")

        async def act(conn: asyncssh.SSHClientConnection) -> dict[str, Any]:
            return await sshc.run_helper(conn, ["piseduce-node", "partition", "--size", size],
                                         timeout=max(60.0, 600 * scale))

        res = await ops.on_nfs(ctx, f"resize the root partition of {ctx.node.name}", act)
        await ctx.log(f"root partition resized ({size}): {int(res.get('root_size') or 0) >> 20} MB")

    async def configure(ctx: StepContext) -> None:
        env = ops.environment(str(ctx.params.get("environment", "")))
        password = str(ctx.params.get("os_password") or "")
        if not password:
            raise StepError("no OS password in the deploy parameters")
        keys = [str(k) for k in ctx.params.get("ssh_keys") or []]
        # The agent's own key lets it check and reboot the system it deployed.
        keys.append(ops.agent_pubkey)
        payload = json.dumps(
            {"hostname": ctx.node.name, "user": env.ssh_user, "ssh_keys": keys, "password": password}
        )

        async def act(conn: asyncssh.SSHClientConnection) -> dict[str, Any]:
            return await sshc.run_helper(conn, ["piseduce-node", "configure"], stdin=payload,
                                         timeout=max(60.0, 180 * scale))

        await ops.on_nfs(ctx, f"configure {ctx.node.name}", act)
        await ctx.log(
            f"system configured: hostname {ctx.node.name}, user {env.ssh_user}, {len(keys) - 1} user key(s)"
        )

    async def boot_deployed(ctx: StepContext) -> None:
        b = ops.board(ctx)
        tmp = ops.tftp_root / f".{b.serial}.boot-{uuid.uuid4().hex[:8]}.tar"

        async def act(conn: asyncssh.SSHClientConnection) -> int:
            return await sshc.read_helper_output_to_file(
                conn, ["piseduce-node", "export-boot"], tmp,
                max_bytes=tftp.MAX_BOOT_BYTES, timeout=max(60.0, 300 * scale),
            )

        try:
            await ops.on_nfs(ctx, f"export the boot files of {b.name}", act)
            count = await asyncio.to_thread(tftp.install_boot_archive, ops.tftp_root, b.serial, tmp)
        except tftp.BootFilesError as exc:
            raise StepError(str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)
        await ctx.log(f"{count} boot files of the deployed system installed for {b.serial}")

    async def reboot(ctx: StepContext) -> None:
        await ops.power_cycle(ctx)

    async def wait_deployed_run(ctx: StepContext) -> None:
        """Nothing to start: the reboot did; `wait_deployed_done` polls."""

    async def wait_deployed_done(ctx: StepContext) -> bool:
        b = ops.board(ctx)
        pinned = ops.deployed_pin(ctx)
        target = ops.target(b, "root", pinned)
        seen = await ops.probe(ctx, target, other_pins=(ops.nfs_pin(ctx),))
        if seen is None:
            return False
        hostname, offered = seen
        if hostname == NFS_HOSTNAME:
            return False
        if hostname != b.name:
            raise StepError(f"the deployed system of {b.name} calls itself {hostname!r}")
        if not pinned:
            ctx.state["host_key"] = offered
            await ctx.save_node_attrs(deployed_host_key=offered)
            await ctx.log(f"pinned the host key of the deployed system: {sshc.fingerprint(offered)}")
        await ctx.progress(100, "deployed system is up")
        return True

    async def user_config(ctx: StepContext) -> None:
        b = ops.board(ctx)
        env = ops.environment(str(ctx.params.get("environment", "")))
        pinned = ops.deployed_pin(ctx)
        if not pinned:
            raise StepError("the deployed system's host key was not pinned")

        async def attempt() -> tuple[str, str]:
            conn, _ = await ops._connect(
                ops.target(b, env.ssh_user, pinned)
            )
            async with conn:
                who = await sshc.run(conn, ["whoami"], timeout=ops.command_timeout)
                host = await sshc.run(conn, ["hostname"], timeout=ops.command_timeout)
            return who.stdout.strip(), host.stdout.strip()

        who, host = await ops.retrying(f"log in to {b.name} as {env.ssh_user}", attempt)
        if who != env.ssh_user:
            raise StepError(f"logging in as {env.ssh_user} gave user {who!r}")
        if host != b.name:
            raise StepError(f"the deployed system calls itself {host!r}, not {b.name!r}")
        ctx.connection.clear()
        ctx.connection.update(
            {
                "ssh": f"ssh -p {b.ssh_port} {env.ssh_user}@{b.ip}",
                "user": env.ssh_user,
                "host": b.ip,
                "port": b.ssh_port,
                "password_set": True,
                "environment": env.name,
                "host_key": pinned,
                "host_key_fingerprint": sshc.fingerprint(pinned),
            }
        )

    async def wipe(ctx: StepContext) -> None:
        async def act(conn: asyncssh.SSHClientConnection) -> dict[str, Any]:
            return await sshc.run_helper(conn, ["piseduce-node", "wipe"], timeout=max(60.0, 600 * scale))

        await ops.on_nfs(ctx, f"wipe the card of {ctx.node.name}", act)
        ctx.state.pop("host_key", None)
        ctx.state.pop("write_result", None)
        ctx.connection.clear()
        await ctx.save_node_attrs(deployed_host_key="")
        await ctx.log("SD card wiped")

    async def remove_boot(ctx: StepContext) -> None:
        b = ops.board(ctx)
        await asyncio.to_thread(tftp.remove_boot, ops.tftp_root, b.serial)

    async def power_off(ctx: StepContext) -> None:
        await ops.power(ctx, False)

    steps = {
        s.name: s
        for s in (
            step("boot_nfs", boot_nfs, "boot folder → netboot system"),
            step("power_cycle", power_cycle, "power cycle"),
            step("wait_nfs", wait_nfs_run, "wait for the board to boot the netboot system",
                 done=wait_nfs_done, weight=3),
            step("write_image", write_image, "write the image", weight=12),
            step("verify", verify, "verify the image"),
            step("partition", partition, "resize the root partition", weight=2),
            step("configure", configure, "configure the system"),
            step("boot_deployed", boot_deployed, "boot folder → deployed system"),
            step("reboot", reboot, "reboot"),
            step("wait_deployed", wait_deployed_run, "wait for the board to boot the deployed system",
                 done=wait_deployed_done, weight=3),
            step("user_config", user_config, "check the user's login"),
            step("wipe", wipe, "wipe the SD card", weight=2),
            step("remove_boot", remove_boot, "remove the boot folder"),
            step("power_off", power_off, "power off"),
        )
    }
    # The same wait in a destroy: its failure message must say the card could not be wiped.
    steps["wait_nfs_wipe"] = dataclasses.replace(
        steps["wait_nfs"], label="wait for the board to boot the netboot system (its card is not wiped yet)"
    )
    return steps


def build_processes(ops: RpiOps) -> dict[str, Process]:
    s = make_steps(ops)

    def seq(*names: str) -> tuple[Step, ...]:
        return tuple(s[n] for n in names)

    deploy = seq("boot_nfs", "power_cycle", "wait_nfs", "write_image", "verify", "partition", "configure",
                 "boot_deployed", "reboot", "wait_deployed", "user_config")
    return {
        "deploy": Process("deploy", deploy, "deploying", "deployed"),
        "redeploy": Process("redeploy", deploy, "deploying", "deployed"),
        "destroy": Process(
            "destroy",
            seq("boot_nfs", "power_cycle", "wait_nfs_wipe", "wipe", "remove_boot", "power_off"),
            "destroying",
            "ended",
        ),
        "reboot": Process("reboot", seq("reboot", "wait_deployed"), "deploying", "deployed"),
        "bootfiles": Process(
            "bootfiles",
            seq("boot_nfs", "power_cycle", "wait_nfs", "boot_deployed", "reboot", "wait_deployed"),
            "deploying",
            "deployed",
        ),
    }


def ensure_nfs_key(nfs_root: Path, pubkey: str) -> bool:
    """Authorise the agent's key on the netboot system (its root filesystem is served from here).
    Returns True when the key was added. Nothing happens when the NFS root is not on this host."""
    root_home = nfs_root / "root"
    if not nfs_root.is_dir() or not root_home.is_dir():
        return False
    ssh_dir = root_home / ".ssh"
    auth = ssh_dir / "authorized_keys"
    try:
        current = auth.read_text()
    except FileNotFoundError:
        current = ""
    if any(line.strip() and sshc.same_key(line, pubkey) for line in current.splitlines()
           if not line.lstrip().startswith("#")):
        return False
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    with auth.open("a") as fh:
        if current and not current.endswith("\n"):
            fh.write("\n")
        fh.write(pubkey.strip() + "\n")
    auth.chmod(0o600)
    return True
