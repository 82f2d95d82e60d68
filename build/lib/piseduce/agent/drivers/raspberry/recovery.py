"""Work on the netboot system that survives a lost connection or a power loss of the board.

A PoE glitch of one second reboots a board: its SSH connection drops at once and it answers
again only after a full boot (20-60 s). Retrying the command a few times within seconds would
fail the deployment for nothing. So when the connection is lost, the board is brought back:
1. it answers at once: a dropped connection only; the command starts again;
2. its PoE port is off (cut by hand, or by the switch): powered on at once;
3. otherwise it is given a boot's time to come back on the netboot system by itself (its TFTP
   folder still points there); if it does not, it is power-cycled once and given a boot's time
   again; then the command starts again (every helper command is idempotent: an image is
   written from its start again).
Each of these is an event on the reservation. The step's own budget (`fail_after`) bounds the
whole; the step fails with the reason when the board does not come back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncssh

from piseduce.agent.drivers.base import StepContext, StepError
from piseduce.agent.drivers.raspberry import ssh as sshc

if TYPE_CHECKING:
    from piseduce.agent.drivers.raspberry.ops import RpiOps

T = TypeVar("T")
# Connection losses handled for one command before the step fails.
MAX_LOSSES = 4
NFS_HOSTNAME = "nfspi"


async def on_nfs(
    ops: RpiOps, ctx: StepContext, what: str, work: Callable[[asyncssh.SSHClientConnection], Awaitable[T]]
) -> T:
    """Run `work` on a connection to the board's netboot system, bringing the board back when
    the connection is lost; helper errors are final."""
    for loss in range(MAX_LOSSES + 1):
        try:
            conn = await ops.nfs_connection(ctx)
            try:
                return await work(conn)
            finally:
                conn.close()
        except sshc.SSHUnavailable as exc:
            if loss == MAX_LOSSES:
                raise StepError(f"{what}: the connection to {ctx.node.name} was lost {loss + 1} times; "
                                f"last: {exc}") from None
            await bring_back(ops, ctx, what, str(exc))
        except sshc.NodeCommandError as exc:
            raise StepError(f"{what}: {exc}") from None
    raise StepError(f"{what}: failed")  # unreachable: the loop returns or raises


async def _nfs_up(ops: RpiOps, ctx: StepContext) -> bool:
    b = ops.board(ctx)
    seen = await ops.probe(ctx, ops.target(b, "root", ops.nfs_pin(ctx)),
                           other_pins=(ops.deployed_pin(ctx),))
    return seen is not None and seen[0] == NFS_HOSTNAME


async def _wait_up(ops: RpiOps, ctx: StepContext, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if await _nfs_up(ops, ctx):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(ops.poll)


async def bring_back(ops: RpiOps, ctx: StepContext, what: str, reason: str) -> None:
    """Return once the board answers on its netboot system again; StepError if it does not."""
    if await _nfs_up(ops, ctx):
        return  # only the connection dropped
    name = ctx.node.name
    started = time.monotonic()
    wait = ops.boot_wait
    # When the switch does not say, the board is waited for as if it were on.
    if await ops.port_is_off(ctx):
        await ctx.log(f"{what}: {name} lost power (its PoE port is off): powering it on", "warning")
        await ops.power(ctx, True)
    else:
        await ctx.log(f"{what}: lost the connection to {name} ({reason}); waiting up to {wait:.0f} s "
                      "for it to boot the netboot system again", "warning")
    if not await _wait_up(ops, ctx, wait):
        await ctx.log(f"{what}: {name} did not come back within {wait:.0f} s: power cycle", "warning")
        await ops.power_cycle(ctx)
        if not await _wait_up(ops, ctx, wait):
            raise StepError(f"{what}: {name} went away ({reason}) and did not come back on the netboot "
                            f"system, even after a power cycle and {time.monotonic() - started:.0f} s")
    await ctx.log(f"{what}: {name} is back on the netboot system after {time.monotonic() - started:.0f} s; "
                  "starting again")
