"""The environment factory on raspberry nodes: save the system of a deployed board as a new
environment its owner can deploy elsewhere.

register_env: boot_nfs → power_cycle → wait_nfs → read_image → register → boot_deployed → reboot
    → wait_deployed

The card can only be read from the netboot system (the deployed system is the user's, and a
mounted root changes under the reader), so the board is netbooted as for `bootfiles`. There
`piseduce-node read-image` streams the card, gzip-compressed, over the pinned SSH connection into
a temporary file of env_path; it is renamed once complete and checked, then the environment row
is added (owner = the reservation's owner). The board then boots its own system again, unchanged.
The image holds the user's password hashes and keys: it is mode 0600 from its first byte (the
temporary file too), and env_path must not be writable by every account.

Unlike the original `reg_env` (scp through a shell with host-key checking off, no timeout, the
executor blocked for the whole copy), every byte goes through asyncssh with the host key pinned,
the copy is bounded in time and in disk space, and other nodes keep advancing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent import env_factory
from piseduce.agent.drivers.base import Process, Step, StepContext, StepError, StepFn
from piseduce.agent.drivers.raspberry import card
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.imaging import image_path
from piseduce.agent.drivers.raspberry.ops import MIN_WORK_SECONDS, RpiOps
from piseduce.agent.drivers.raspberry.progress import PhaseProgress
from piseduce.agent.models import Environment
from piseduce.db import write_session
from piseduce.private_files import owner_only

log = logging.getLogger(__name__)

# Seconds of real hardware: the largest card (card.MAX_CARD_BYTES) read at the worst-case speed,
# with gzip on the board's CPU, takes about two hours.
READ_FAIL_AFTER = 3 * 3600
REGISTER_FAIL_AFTER = 120
# What env_path keeps free for everything else while an image arrives.
SPACE_RESERVE = 256 * 1024**2
STATE_KEY = "register_env"
STEPS = ("boot_nfs", "power_cycle", "wait_nfs", "read_image", "register", "boot_deployed", "reboot",
         "wait_deployed")


def secure_saved_images(sessions: sessionmaker[Session], env_dir: Path) -> int:
    """At start: private environments' images readable by others (saved 0644 by older versions)
    become 0600, and a world-writable env_path is said in the log. Returns how many changed."""
    unsafe = env_factory.unsafe_env_dir(env_dir)
    if unsafe:
        log.warning("%s; saving a node as an environment is refused until then", unsafe)
    with sessions() as s:
        images = list(s.scalars(select(Environment.image).where(Environment.owner != "")))
    changed = 0
    for image in images:
        try:
            path = image_path(env_dir, image)
        except ValueError:
            continue
        if owner_only(path):
            changed += 1
            log.warning("%s is a private environment's image and was readable by others: mode now 0600",
                        path)
    return changed


def _name(ctx: StepContext) -> str:
    try:
        return env_factory.check_name(ctx.args.get("name"))
    except ValueError as exc:
        raise StepError(f"environment name: {exc}") from None


def _record(ctx: StepContext) -> dict[str, Any]:
    rec = ctx.state.get(STATE_KEY)
    return rec if isinstance(rec, dict) else {}


def env_dir(ops: RpiOps) -> Path:
    path = ops.env_dir
    if not path.is_dir():
        raise StepError(f"env_path {path} does not exist on the agent")
    unsafe = env_factory.unsafe_env_dir(path)
    if unsafe:
        raise StepError(unsafe)
    return path

def check_free(ops: RpiOps, name: str, final: Path) -> None:
    with ops.sessions() as s:
        if s.get(Environment, name) is not None:
            raise StepError(env_factory.unavailable(name))  # said alike whoever holds it
    if final.exists():
        raise StepError(env_factory.unavailable(name))

async def read_image(ops: RpiOps, ctx: StepContext) -> None:
    name = _name(ctx)
    folder = env_dir(ops)
    final = folder / env_factory.image_file(name)
    rec = _record(ctx)
    if rec.get("file") == final.name and final.is_file() and final.stat().st_size == rec.get("bytes"):
        return  # read before an executor restart
    await asyncio.to_thread(check_free, ops, name, final)
    part = folder / f".{final.name}.part"
    free = shutil.disk_usage(folder).free - SPACE_RESERVE
    if free <= 0:
        raise StepError(f"env_path {folder} has no free space for a new image")
    progress = PhaseProgress(ctx)
    await ctx.progress(0, f"reading the card of {ctx.node.name}")
    argv = ["piseduce-node", "read-image", "--compress", "gz"]

    async def work(conn: Any) -> tuple[dict[str, Any], int, str]:
        return await sshc.read_helper_stream(conn, argv, part, on_progress=progress,
                                             stall_timeout=card.stall_seconds(), max_bytes=free)

    try:
        result, received, checksum = await ops.on_nfs(ctx, f"read the card of {ctx.node.name}", work)
        if received != int(result.get("compressed") or -1):
            raise StepError(f"the image arrived incomplete: {received} of "
                            f"{result.get('compressed')} bytes")
        try:
            # A link never replaces a file: an image that appeared meanwhile stays untouched.
            os.link(part, final)
        except FileExistsError:
            raise StepError(env_factory.unavailable(name)) from None
    finally:
        part.unlink(missing_ok=True)
    ctx.state[STATE_KEY] = {
        "file": final.name,
        "bytes": received,
        "checksum": checksum,
        "size": int(result.get("size") or 0),
        "sector_start": int(result.get("sector_start") or 0),
        "image_sha256": str(result.get("sha256") or ""),
    }
    await ctx.progress(100, f"{received >> 20} MB saved as {final.name}")
    await ctx.log(
        f"card of {ctx.node.name} saved: {int(result.get('size') or 0) >> 20} MB "
        f"({received >> 20} MB compressed), sha256 {checksum[:16]}…"
    )

def ssh_user(ops: RpiOps, ctx: StepContext) -> str:
    env_name = str(ctx.params.get("environment") or "")
    with ops.sessions() as s:
        row = s.get(Environment, env_name) if env_name else None
        if row is not None:
            return row.ssh_user
    return str(ctx.connection.get("user") or "root")

def insert(ops: RpiOps, ctx: StepContext, name: str, rec: dict[str, Any], user: str) -> bool:
    """Adds the row; False when this very registration already added it."""
    with write_session(ops.sessions) as s:
        row = s.get(Environment, name)
        if row is not None:
            if row.image == rec["file"] and row.checksum == rec["checksum"]:
                return False
            raise StepError(env_factory.unavailable(name))
        source = str(ctx.params.get("environment") or "")
        s.add(Environment(
            name=name, image=rec["file"], size=rec["size"], sector_start=rec["sector_start"],
            ssh_user=user, state="available", checksum=rec["checksum"],
            owner=ctx.reservation.owner,
            description=f"saved from {ctx.node.name}" + (f" (deployed with {source})" if source else ""),
        ))
    return True

async def register(ops: RpiOps, ctx: StepContext) -> None:
    name = _name(ctx)
    rec = _record(ctx)
    if not rec.get("file") or not rec.get("checksum"):
        raise StepError("no record of the card's image: the registration must start again")
    path = env_dir(ops) / str(rec["file"])
    if not path.is_file():
        raise StepError(f"the image file {rec['file']} disappeared from env_path")
    user = await asyncio.to_thread(ssh_user, ops, ctx)
    try:
        added = await asyncio.to_thread(insert, ops, ctx, name, rec, user)
    except (StepError, IntegrityError) as exc:
        # The name went to someone else: the file is ours and nothing describes it.
        path.unlink(missing_ok=True)
        if isinstance(exc, StepError):
            raise
        raise StepError(env_factory.unavailable(name)) from None
    # Done: a later registration from this reservation reads the card again.
    ctx.state.pop(STATE_KEY, None)
    if added:
        await ctx.log(
            f"environment {name} registered for {ctx.reservation.owner} "
            f"(user {user}, root partition at sector {rec['sector_start']})"
        )


def make_register_steps(ops: RpiOps, base: Mapping[str, Step]) -> dict[str, Step]:
    poll = base["boot_nfs"].poll

    def step(name: str, run: StepFn, label: str, fail_after: float, weight: int = 1) -> Step:
        return Step(name=name, run=run, label=label, fail_after=max(fail_after * ops.scale, MIN_WORK_SECONDS),
                    poll=poll, weight=weight)

    return {
        "read_image": step(
            "read_image", partial(read_image, ops), "save the card as an image", READ_FAIL_AFTER, 12
        ),
        "register": step("register", partial(register, ops), "register the environment", REGISTER_FAIL_AFTER),
    }


def register_env_process(ops: RpiOps, base: Mapping[str, Step]) -> Process:
    """`base`: the driver's other steps (netboot, boot files, reboot), shared with bootfiles."""
    steps = {**base, **make_register_steps(ops, base)}
    return Process(env_factory.PROCESS, tuple(steps[n] for n in STEPS))
