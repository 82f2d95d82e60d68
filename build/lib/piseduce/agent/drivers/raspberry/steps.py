"""The raspberry processes as data: each step a small named async function `step(ops, ctx)`
over the shared `RpiOps` (ops.py), bound into `Step`s by one table (`STEPS`).

deploy / redeploy: boot_nfs → power_cycle → wait_nfs → write_image → verify → partition →
    configure → boot_deployed → reboot → wait_deployed → check_login
destroy: boot_nfs → power_cycle → wait_nfs → wipe → remove_boot → power_off
reboot: reboot → wait_deployed
bootfiles: boot_nfs → power_cycle → wait_nfs → boot_deployed → reboot → wait_deployed
    (the board's boot partition can only be read from the netboot system: the deployed system
    belongs to the user and holds no helper, so the board is netbooted, its boot files exported
    again, then it reboots into its system.)

Every `run` can be called again after a crash: power cycles and folder swaps are repeatable, the
helper commands rewrite what they wrote. Timeouts are seconds of real hardware (ops.TIMEOUTS),
multiplied by `timeout_scale` here (the engine never rescales them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import asyncssh

from piseduce.agent.drivers.base import PollFn, Process, Step, StepContext, StepError, StepFn
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry import tftp
from piseduce.agent.drivers.raspberry.imaging import Imaging
from piseduce.agent.drivers.raspberry.imaging import image_path as image_path  # re-exported
from piseduce.agent.drivers.raspberry.ops import (
    BOOT_WAITS,
    MIN_WORK_SECONDS,
    NFS_HOSTNAME,
    PART_SIZES,
    TIMEOUTS,
    RpiOps,
)


async def boot_nfs(ops: RpiOps, ctx: StepContext) -> None:
    b = ops.board(ctx)
    await asyncio.to_thread(ensure_nfs_key, ops.nfs_root, ops.agent_pubkey)
    try:
        await asyncio.to_thread(tftp.set_nfs_boot, ops.tftp_root, b.serial)
    except tftp.BootFilesError as exc:
        raise StepError(str(exc)) from None

async def power_cycle(ops: RpiOps, ctx: StepContext) -> None:
    await ops.power_cycle(ctx)

async def wait_nfs_run(ops: RpiOps, ctx: StepContext) -> None:
    """Nothing to start: the power cycle did; `wait_nfs_done` polls."""

async def wait_nfs_done(ops: RpiOps, ctx: StepContext) -> bool:
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

async def partition(ops: RpiOps, ctx: StepContext) -> None:
    size = str(ctx.params.get("part_size") or "whole")
    if size not in PART_SIZES:
        raise StepError(f"partition size {size!r} is not one of {', '.join(PART_SIZES)}")

    async def act(conn: asyncssh.SSHClientConnection) -> dict[str, Any]:
        return await sshc.run_helper(conn, ["piseduce-node", "partition", "--size", size],
                                     timeout=max(60.0, 600 * ops.scale))

    res = await ops.on_nfs(ctx, f"resize the root partition of {ctx.node.name}", act)
    await ctx.log(f"root partition resized ({size}): {int(res.get('root_size') or 0) >> 20} MB")

async def configure(ops: RpiOps, ctx: StepContext) -> None:
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
                                     timeout=max(60.0, 180 * ops.scale))

    await ops.on_nfs(ctx, f"configure {ctx.node.name}", act)
    await ctx.log(
        f"system configured: hostname {ctx.node.name}, user {env.ssh_user}, {len(keys) - 1} user key(s)"
    )

async def boot_deployed(ops: RpiOps, ctx: StepContext) -> None:
    b = ops.board(ctx)
    tmp = ops.tftp_root / f".{b.serial}.boot-{uuid.uuid4().hex[:8]}.tar"

    async def act(conn: asyncssh.SSHClientConnection) -> int:
        return await sshc.read_helper_output_to_file(
            conn, ["piseduce-node", "export-boot"], tmp,
            max_bytes=tftp.MAX_BOOT_BYTES, timeout=max(60.0, 300 * ops.scale),
        )

    try:
        await ops.on_nfs(ctx, f"export the boot files of {b.name}", act)
        count = await asyncio.to_thread(tftp.install_boot_archive, ops.tftp_root, b.serial, tmp)
    except tftp.BootFilesError as exc:
        raise StepError(str(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)
    await ctx.log(f"{count} boot files of the deployed system installed for {b.serial}")

async def reboot(ops: RpiOps, ctx: StepContext) -> None:
    await ops.power_cycle(ctx)

async def wait_deployed_run(ops: RpiOps, ctx: StepContext) -> None:
    """Nothing to start: the reboot did; `wait_deployed_done` polls."""

async def wait_deployed_done(ops: RpiOps, ctx: StepContext) -> bool:
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

async def check_login(ops: RpiOps, ctx: StepContext) -> None:
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

async def remove_boot(ops: RpiOps, ctx: StepContext) -> None:
    b = ops.board(ctx)
    await asyncio.to_thread(tftp.remove_boot, ops.tftp_root, b.serial)

async def power_off(ops: RpiOps, ctx: StepContext) -> None:
    await ops.power(ctx, False)


def _step(ops: RpiOps, name: str, run: StepFn, label: str, *, done: PollFn | None = None, weight: int = 1,
          budget: Callable[[StepContext], float] | None = None) -> Step:
    reboot_after, fail_after = TIMEOUTS[name]
    fail = fail_after * ops.scale if fail_after is not None else None
    if fail is not None and name not in BOOT_WAITS:
        # Only boots follow the (simulated) clock; writing a card takes real time at any scale.
        fail = max(fail, MIN_WORK_SECONDS)
    return Step(
        name=name,
        run=run,
        done=done,
        label=label,
        reboot_after=reboot_after * ops.scale if reboot_after is not None else None,
        fail_after=fail,
        poll=ops.poll,
        weight=weight,
        budget=budget,
    )


StepImpl = Callable[[RpiOps, StepContext], Awaitable[Any]]
# name → (run, label, done, weight); imaging's steps are bound to an `Imaging` in make_steps.
STEPS: dict[str, tuple[StepImpl | str, str, StepImpl | None, int]] = {
    "boot_nfs": (boot_nfs, "boot folder → netboot system", None, 1),
    "power_cycle": (power_cycle, "power cycle", None, 1),
    "wait_nfs": (wait_nfs_run, "wait for the board to boot the netboot system", wait_nfs_done, 3),
    "write_image": ("write_image", "write the image", None, 12),
    "verify": ("verify", "read the card back and verify it", None, 6),
    "partition": (partition, "resize the root partition", None, 2),
    "configure": (configure, "configure the system", None, 1),
    "boot_deployed": (boot_deployed, "boot folder → deployed system", None, 1),
    "reboot": (reboot, "reboot", None, 1),
    "wait_deployed": (
        wait_deployed_run, "wait for the board to boot the deployed system", wait_deployed_done, 3
    ),
    "check_login": (check_login, "check the user's login", None, 1),
    "wipe": ("wipe", "wipe the SD card", None, 2),
    "remove_boot": (remove_boot, "remove the boot folder", None, 1),
    "power_off": (power_off, "power off", None, 1),
}
BUDGETS = {"write_image": "write_budget", "verify": "verify_budget"}


def make_steps(ops: RpiOps) -> dict[str, Step]:
    imaging = Imaging(ops, MIN_WORK_SECONDS)
    steps = {}
    for name, (run, label, done, weight) in STEPS.items():
        bound: StepFn = getattr(imaging, run) if isinstance(run, str) else partial(run, ops)
        budget = getattr(imaging, BUDGETS[name]) if name in BUDGETS else None
        steps[name] = _step(ops, name, bound, label, done=partial(done, ops) if done else None, weight=weight,
                            budget=budget)
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
                 "boot_deployed", "reboot", "wait_deployed", "check_login")
    return {
        "deploy": Process("deploy", deploy),
        "redeploy": Process("redeploy", deploy),
        "destroy": Process(
            "destroy",
            seq("boot_nfs", "power_cycle", "wait_nfs_wipe", "wipe", "remove_boot", "power_off"),
        ),
        "reboot": Process("reboot", seq("reboot", "wait_deployed")),
        "bootfiles": Process(
            "bootfiles",
            seq("boot_nfs", "power_cycle", "wait_nfs", "boot_deployed", "reboot", "wait_deployed"),
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
