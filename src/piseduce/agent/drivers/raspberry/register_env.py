"""The environment factory on raspberry nodes: save the system of a deployed board as a new
environment its owner can deploy elsewhere.

register_env: boot_nfs → power_cycle → wait_nfs → read_image → register → boot_deployed → reboot
    → wait_deployed

The card can only be read from the netboot system (the deployed system is the user's, and a
mounted root changes under the reader), so the board is netbooted as for `bootfiles`. There
`piseduce-node read-image` streams the card, gzip-compressed, over the pinned SSH connection into
a temporary file of env_path; it is renamed once complete and checked, then the environment row
is added (owner = the reservation's owner). The board then boots its own system again, unchanged.

Unlike the original `reg_env` (scp through a shell with host-key checking off, no timeout, the
executor blocked for the whole copy), every byte goes through asyncssh with the host key pinned,
the copy is bounded in time and in disk space, and other nodes keep advancing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from piseduce.agent import env_factory
from piseduce.agent.drivers.base import Process, Step, StepContext, StepError
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.steps import MIN_WORK_SECONDS, RpiOps, Throttle
from piseduce.agent.models import Environment
from piseduce.db import write_session

# Seconds of real hardware: a 32 GB card at SD speed with gzip on the board's CPU takes about an hour.
READ_FAIL_AFTER = 3 * 3600
REGISTER_FAIL_AFTER = 120
# What env_path keeps free for everything else while an image arrives.
SPACE_RESERVE = 256 * 1024**2
STATE_KEY = "register_env"
STEPS = ("boot_nfs", "power_cycle", "wait_nfs", "read_image", "register", "boot_deployed", "reboot",
         "wait_deployed")


def _name(ctx: StepContext) -> str:
    try:
        return env_factory.check_name(ctx.args.get("name"))
    except ValueError as exc:
        raise StepError(f"environment name: {exc}") from None


def _record(ctx: StepContext) -> dict[str, Any]:
    rec = ctx.state.get(STATE_KEY)
    return rec if isinstance(rec, dict) else {}


def make_register_steps(ops: RpiOps, base: Mapping[str, Step]) -> dict[str, Step]:
    scale = ops.scale
    poll = base["boot_nfs"].poll

    def env_dir() -> Path:
        path = ops.env_dir
        if not path.is_dir():
            raise StepError(f"env_path {path} does not exist on the agent")
        return path

    def check_free(name: str, final: Path) -> None:
        with ops.sessions() as s:
            if s.get(Environment, name) is not None:
                raise StepError(f"an environment named {name} already exists")
        if final.exists():
            raise StepError(f"env_path already holds a file {final.name}")

    async def read_image(ctx: StepContext) -> None:
        name = _name(ctx)
        folder = env_dir()
        final = folder / env_factory.image_file(name)
        rec = _record(ctx)
        if rec.get("file") == final.name and final.is_file() and final.stat().st_size == rec.get("bytes"):
            return  # read before an executor restart
        await asyncio.to_thread(check_free, name, final)
        part = folder / f".{final.name}.part"
        free = shutil.disk_usage(folder).free - SPACE_RESERVE
        if free <= 0:
            raise StepError(f"env_path {folder} has no free space for a new image")
        throttle = Throttle(ctx)
        await ctx.progress(0, f"reading the card of {ctx.node.name}")
        argv = ["piseduce-node", "read-image", "--compress", "gz"]

        async def attempt() -> tuple[dict[str, Any], int, str]:
            conn = await ops.nfs_connection(ctx)
            try:
                return await sshc.read_helper_stream(conn, argv, part, on_progress=throttle,
                                                stall_timeout=max(30.0, 120.0 * scale), max_bytes=free)
            finally:
                conn.close()

        try:
            result, received, checksum = await ops.retrying(f"read the card of {ctx.node.name}", attempt)
            if received != int(result.get("compressed") or -1):
                raise StepError(f"the image arrived incomplete: {received} of "
                                f"{result.get('compressed')} bytes")
            try:
                # A link never replaces a file: an image that appeared meanwhile stays untouched.
                os.link(part, final)
            except FileExistsError:
                raise StepError(f"env_path already holds a file {final.name}") from None
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

    def ssh_user(ctx: StepContext) -> str:
        env_name = str(ctx.params.get("environment") or "")
        with ops.sessions() as s:
            row = s.get(Environment, env_name) if env_name else None
            if row is not None:
                return row.ssh_user
        return str(ctx.connection.get("user") or "root")

    def insert(ctx: StepContext, name: str, rec: dict[str, Any], user: str) -> bool:
        """Adds the row; False when this very registration already added it."""
        with write_session(ops.sessions) as s:
            row = s.get(Environment, name)
            if row is not None:
                if row.image == rec["file"] and row.checksum == rec["checksum"]:
                    return False
                raise StepError(f"an environment named {name} was registered meanwhile")
            source = str(ctx.params.get("environment") or "")
            s.add(Environment(
                name=name, image=rec["file"], size=rec["size"], sector_start=rec["sector_start"],
                ssh_user=user, state="available", checksum=rec["checksum"],
                owner=ctx.reservation.owner,
                description=f"saved from {ctx.node.name}" + (f" (deployed with {source})" if source else ""),
            ))
        return True

    async def register(ctx: StepContext) -> None:
        name = _name(ctx)
        rec = _record(ctx)
        if not rec.get("file") or not rec.get("checksum"):
            raise StepError("no record of the card's image: the registration must start again")
        path = env_dir() / str(rec["file"])
        if not path.is_file():
            raise StepError(f"the image file {rec['file']} disappeared from env_path")
        user = await asyncio.to_thread(ssh_user, ctx)
        try:
            added = await asyncio.to_thread(insert, ctx, name, rec, user)
        except (StepError, IntegrityError) as exc:
            # The name went to someone else: the file is ours and nothing describes it.
            path.unlink(missing_ok=True)
            if isinstance(exc, StepError):
                raise
            raise StepError(f"an environment named {name} was registered meanwhile") from None
        # Done: a later registration from this reservation reads the card again.
        ctx.state.pop(STATE_KEY, None)
        if added:
            await ctx.log(
                f"environment {name} registered for {ctx.reservation.owner} "
                f"(user {user}, root partition at sector {rec['sector_start']})"
            )

    def step(name: str, run: Any, label: str, fail_after: float, weight: int = 1) -> Step:
        return Step(name=name, run=run, label=label, fail_after=max(fail_after * scale, MIN_WORK_SECONDS),
                    poll=poll, weight=weight)

    return {
        "read_image": step("read_image", read_image, "save the card as an image", READ_FAIL_AFTER, 12),
        "register": step("register", register, "register the environment", REGISTER_FAIL_AFTER),
    }


def register_env_process(ops: RpiOps, base: Mapping[str, Step]) -> Process:
    """`base`: the driver's other steps (netboot, boot files, reboot), shared with bootfiles."""
    steps = {**base, **make_register_steps(ops, base)}
    return Process(env_factory.PROCESS, tuple(steps[n] for n in STEPS), "deploying", "deployed")
