"""Pipelined image distribution: the boards deployed together form a chain, each writing the
image to its card and serving it at once to the next; the agent sends the image once.

How a group forms. Each deploy's `write_image` step runs on its own (engine), so the group is met
here, in the executor process: a step joins the open group of its key (owner, bin, environment,
image checksum) and waits until every reservation of that owner and bin deploying that environment
whose action is not past `write_image` yet has joined, or until the gathering window (one boot's
time, `RpiOps.boot_wait`) has passed. A group of one takes the direct path (the agent streams the
image over the board's SSH session, as before); a board that comes after the group started forms a
group of its own.

The chain. Each member runs `piseduce-node chain-write` over its pinned SSH session (the token and
its instructions on stdin), which reports the port it serves on; the agent then tells the head to
pull from the agent's `ImageSource` and every other board to pull from its predecessor, each as
soon as it and its source serve. A board whose helper fails, whose session is lost, or whose bytes
(received, or on its card) stop growing while its source has more or its card has bytes left to
write (`stall_seconds`) is cut out, and its successors are told to pull from the nearest healthy
predecessor (or the agent), from the byte they have, while the others go on. The cut board's step
gets `LeftChain` with the reason: the board lost power, rebooted or lost its link, so its write
step brings it back as for any power loss (`recovery.bring_back`, issue 10) and writes it by the
direct path (imaging.py); only an error its own helper reports (a broken card) is final.
A board whose bytes stop growing because its source stopped is not to blame: only the first
stalled board in the chain is cut (`Group.stalled`). Once every member has the image (or
failed), each is released. Only raw images are pipelined (a board serves what its card holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from sqlalchemy import select

from piseduce.agent.drivers.base import StepContext, StepError
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.progress import PhaseProgress
from piseduce.agent.drivers.raspberry.relay_source import ImageSource
from piseduce.agent.drivers.raspberry.stall import parse_progress
from piseduce.agent.lifecycle import DEPLOYING
from piseduce.agent.models import ACTION_OPEN, Action, Reservation

if TYPE_CHECKING:
    from piseduce.agent.drivers.raspberry.ops import RpiOps

log = logging.getLogger(__name__)

# Steps of a deploy before the image is written: such a reservation is still to join its group.
BEFORE_WRITE = ("boot_nfs", "power_cycle", "wait_nfs", "wait_nfs_wipe", "write_image")
# What a hop adds to the chain's time: the pipeline's fill, a chunk (256 KiB, forwarded before the
# card writes it) over a link, with a wide margin; the budget allows for chains of up to MAX_HOPS.
HOP_SECONDS = 0.1
MAX_HOPS = 1000
# Re-feeds the budget allows for (each waits for a stall to be seen).
REFEEDS = 2
READY_SECONDS = 60.0
# The gathering window never closes sooner: boards booted together reach write_image seconds
# apart on a loaded host, and a group of one (nothing else expected) starts at once anyway.
MIN_GATHER_SECONDS = 30.0


def gather_seconds(boot_wait: float) -> float:
    """How long a group waits for the members it expects: a boot's time."""
    return max(MIN_GATHER_SECONDS, boot_wait)

Key = tuple[str, str, str, str]


class LeftChain(StepError):
    """A board was cut out of the chain for a reason its recovery may cure (power loss, reboot,
    lost session, stall): its step brings it back and writes it by the direct path."""


@dataclass
class Member:
    ctx: StepContext
    name: str
    ip: str
    progress: PhaseProgress
    port: int = 0
    done: int = 0  # bytes on its card
    received: int = 0  # bytes it received (and serves): its card trails them
    grew_at: float = field(default_factory=time.monotonic)
    upstream: Member | None = None  # None: the agent
    failed: str | None = None
    wrote: bool = False
    proc: Any = None
    conn: asyncssh.SSHClientConnection | None = None
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    result: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    last_upstream_error: str = ""

    @property
    def alive(self) -> bool:
        return self.failed is None


class Group:
    def __init__(self, key: Key, image: Path, sha256: str) -> None:
        self.key = key
        self.image = image
        self.sha256 = sha256
        self.size = image.stat().st_size
        self.members: list[Member] = []
        self.formed = asyncio.Event()
        self.started = False
        self.token = secrets.token_bytes(32)
        # Only the members may pull from the agent (they join below, each adds its address).
        self.source = ImageSource(image, self.token, allowed=set())
        self.released = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- the chain

    def predecessor(self, m: Member) -> Member | None:
        """The nearest healthy member before `m` (None: the agent)."""
        i = self.members.index(m)
        for p in reversed(self.members[:i]):
            if p.alive:
                return p
        return None

    def has(self, source: Member | None) -> int:
        """What `source` can serve (None: the agent, the whole image)."""
        return self.size if source is None else source.received

    def stalled(self, stall: float, now: float) -> Member | None:
        """The first board whose bytes stopped growing for `stall` seconds while its source has
        more and is itself moving. A board whose source went quiet too waits: its source is cut
        in turn (or resumes), and it is re-fed, so only the first stalled board is blamed
        whatever order their silences were seen in."""
        for m in self.members:
            if not m.alive or m.wrote or not m.port:
                continue
            if now - m.grew_at <= stall:
                continue
            if m.received > m.done:  # its own card stopped, with bytes to write
                return m
            source = m.upstream
            if self.has(source) > m.received and (source is None or source.wrote
                                                  or now - source.grew_at <= stall / 2):
                return m
        return None

    async def point(self, m: Member, source: Member | None) -> None:
        m.upstream = source
        m.grew_at = time.monotonic()
        address = (self.source_address if source is None else f"{source.ip}:{source.port}")
        await self.send(m, {"pull": address})
        await m.ctx.log(f"distribution: {m.name} pulls the image from "
                        f"{'the agent' if source is None else source.name}"
                        f"{f' from byte {m.received}' if m.received else ''}")

    @property
    def source_address(self) -> str:
        return f"{self.source_host}:{self.source.port}"

    source_host = ""

    async def send(self, m: Member, msg: dict[str, Any]) -> None:
        if m.proc is None:
            return
        try:
            m.proc.stdin.write((json.dumps(msg) + "\n").encode())
            await asyncio.wait_for(m.proc.stdin.drain(), 10)
        except (OSError, asyncssh.Error, TimeoutError, BrokenPipeError) as exc:
            log.info("distribution: cannot instruct %s: %s", m.name, exc)

    async def cut(self, m: Member, reason: str, *, final: bool = False) -> None:
        """Cut `m` out of the chain; its successors pull from its nearest healthy predecessor.
        `final`: its own helper failed (no recovery cures that); else its step recovers it."""
        if not m.alive:
            return
        m.failed = reason
        if not m.result.done():
            m.result.set_exception(StepError(reason) if final else LeftChain(reason))
        if m.proc is not None:
            m.proc.close()
        if m.conn is not None:
            m.conn.close()
        if self.released.is_set():
            return
        source = self.predecessor(m)
        for s in self.members:
            if s.alive and s.upstream is m and not s.wrote:
                await s.ctx.log(f"distribution: {m.name} was cut out of the chain ({reason}); "
                                f"{s.name} resumes from byte {s.received}", "warning")
                await self.point(s, source)
            elif s.alive and s.upstream is m:
                s.upstream = source

    def finished(self) -> bool:
        return all(m.wrote or not m.alive for m in self.members)


class Distributor:
    """The executor's distributions (one event loop): open groups by key, and running chains."""

    def __init__(self, ops: RpiOps, stall_seconds: Callable[[], float]) -> None:
        self.ops = ops
        self.stall_seconds = stall_seconds
        self.open: dict[Key, Group] = {}

    # -- forming

    def expected(self, ctx: StepContext, environment: str) -> int:
        """Reservations of this owner and bin deploying `environment`, not past write_image yet."""
        r = ctx.reservation
        with self.ops.sessions() as s:
            rows = s.execute(
                select(Reservation.params, Action.step_name)
                .join(Action, Action.reservation_id == Reservation.id)
                .where(Reservation.owner == r.owner, Reservation.bin == r.bin,
                       Reservation.status == DEPLOYING, Action.status.in_(ACTION_OPEN),
                       Action.process.in_(("deploy", "redeploy")))
            ).all()
        return sum(1 for params, step in rows
                   if isinstance(params, dict) and params.get("environment") == environment
                   and (step or "boot_nfs") in BEFORE_WRITE)

    async def join(self, ctx: StepContext, environment: str, image: Path, sha256: str,
                   progress: PhaseProgress) -> tuple[Group, Member]:
        r = ctx.reservation
        key: Key = (r.owner, r.bin, environment, sha256)
        group = self.open.get(key)
        if group is None:
            group = Group(key, image, sha256)
            self.open[key] = group
            task = asyncio.create_task(self._form(ctx, group, environment))
            group.tasks.add(task)
        b = self.ops.board(ctx)
        member = Member(ctx, ctx.node.name, b.ip, progress)
        group.members.append(member)
        assert group.source.allowed is not None
        group.source.allowed.add(b.ip)
        try:
            await group.formed.wait()
        except asyncio.CancelledError:
            if not group.started:
                group.members.remove(member)
            else:
                await group.cut(member, "the write step was stopped before the distribution started")
            raise
        return group, member

    async def _form(self, ctx: StepContext, group: Group, environment: str) -> None:
        deadline = time.monotonic() + gather_seconds(self.ops.boot_wait)
        try:
            while time.monotonic() < deadline:
                try:
                    want = await asyncio.to_thread(self.expected, ctx, environment)
                except Exception:  # noqa: BLE001 - a database hiccup: the window decides
                    log.exception("distribution: counting the group")
                    want = 0
                if want and len(group.members) >= want:
                    break
                await asyncio.sleep(self.ops.poll)
        finally:
            group.started = True
            self.open.pop(group.key, None)
            group.members.sort(key=lambda m: m.name)
            group.formed.set()
        if len(group.members) > 1:
            task = asyncio.create_task(self._drive(group))
            group.tasks.add(task)

    # -- a member's part (in its own write_image step)

    async def write(self, group: Group, m: Member, *, sparse: bool) -> dict[str, Any]:
        reader = asyncio.create_task(self._member(group, m, sparse))
        group.tasks.add(reader)
        try:
            return await m.result
        except asyncio.CancelledError:
            await group.cut(m, "the write step was stopped (its time budget ran out, or the deployment was "
                               "cancelled)")
            raise

    async def _member(self, group: Group, m: Member, sparse: bool) -> None:
        # `peers`: only the chain's boards may connect to a board (its successors pull from it).
        header = {"token": group.token.hex(), "sha256": group.sha256, "size": group.size, "sparse": sparse,
                  "peers": sorted({x.ip for x in group.members})}
        lines: list[bytes] = []
        try:
            m.conn = await self.ops.nfs_connection(m.ctx)
            if not group.source_host:
                # Where the boards reach the agent: this side of the board's own SSH session.
                group.source_host = str(m.conn.get_extra_info("sockname")[0])
            m.proc = await m.conn.create_process(shlex.join(["piseduce-node", "chain-write"]), encoding=None)
            m.proc.stdin.write((json.dumps(header) + "\n").encode())
            while True:
                line = await m.proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                del lines[:-20]
                await self._line(group, m, line)
        except StepError as exc:
            await group.cut(m, str(exc), final=True)
            return
        except (sshc.SSHUnavailable, OSError, asyncssh.Error) as exc:
            await group.cut(m, await self._lost(m, str(exc)))
            return
        if group.released.is_set() or not m.alive:
            return
        try:
            status = m.proc.exit_status
            err = bytes(await asyncio.wait_for(m.proc.stderr.read(), 5))
            sshc.helper_result(["piseduce-node", "chain-write"], status if status is not None else 255,
                               b"".join(lines).decode("utf-8", "replace"), err.decode("utf-8", "replace"))
            reason = "'piseduce-node chain-write' exited before the distribution ended"
        except sshc.NodeCommandError as exc:
            await group.cut(m, str(exc), final=True)
            return
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = await self._lost(m, str(exc))
        if m.proc.exit_status is None:
            reason = await self._lost(m, "the SSH session closed")
        await group.cut(m, reason)

    async def _lost(self, m: Member, what: str) -> str:
        where = "its PoE port is off" if await self.ops.port_is_off(m.ctx) else what
        return f"{m.name} left the image distribution: {where}"

    async def _line(self, group: Group, m: Member, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if "listening" in msg:
            m.port = int(msg["listening"])
            m.listening.set()
        elif msg.get("wrote") is True:
            m.wrote = True
            m.done = m.received = group.size
            if not m.result.done():
                m.result.set_result(msg)
        elif "upstream" in msg:
            m.last_upstream_error = f"{msg.get('upstream')}: {msg.get('error')}"
        elif "refused" in msg:
            # The board groups a flood: one line per peer per minute, with how many it refused.
            count = msg.get("count")
            times = f"{count} connections" if isinstance(count, int) and count > 1 else "a connection"
            await m.ctx.log(f"distribution: {m.name} refused {times} from {msg['refused']} "
                            f"({msg.get('error')})", "warning")
        elif msg.get("ok") is False:
            await group.cut(m, f"'piseduce-node chain-write' failed: {msg.get('error')}", final=True)
        else:
            progress = parse_progress(line)
            if progress is not None:
                done = progress.done or 0
                received = max(done, progress.received or 0)
                if done > m.done or received > m.received:
                    m.done, m.received = max(m.done, done), max(m.received, received)
                    m.grew_at = time.monotonic()
                await m.progress(progress)

    # -- the chain's driver (one task per group)

    async def _drive(self, group: Group) -> None:
        try:
            await self._wire(group)
            stall = self.stall_seconds()
            while not group.finished():
                await asyncio.sleep(min(1.0, self.ops.poll * 4))
                m = group.stalled(stall, time.monotonic())
                if m is not None:  # cut: its successors are re-fed, and the next look starts over
                    err = m.last_upstream_error
                    why = f"; last error pulling: {err}" if err else ""
                    more = "its card had more to write" if m.received > m.done else "its source had more"
                    await group.cut(m, f"{m.name} stalled in the image distribution: no byte received or "
                                       f"written for {stall:.0f} s while {more} ({m.received} of "
                                       f"{group.size} bytes received, {m.done} on its card){why}")
            sent = group.source.sent
            head = next((m for m in group.members if m.wrote), None)
            if head is not None:
                ok = sum(1 for m in group.members if m.wrote)
                await head.ctx.log(f"distribution: the agent sent {sent} bytes for {ok} of "
                                   f"{len(group.members)} boards ({sent / max(1, group.size):.2f} images)")
        except Exception:
            # The members' steps fail with "the distribution ended without this board" (release).
            log.exception("distribution %s failed", group.key[1:3])
        finally:
            await self._release(group)

    async def _wire(self, group: Group) -> None:
        """Each board pulls as soon as it and its source serve (the head: as soon as it serves):
        the chain starts with its first boards, not once the last one's helper is up."""
        wait = max(READY_SECONDS, self.ops.connect_timeout * 2)
        deadline = time.monotonic() + wait
        source_started = asyncio.Lock()

        async def ready(m: Member) -> bool:
            while m.alive and not m.listening.is_set():
                if time.monotonic() > deadline:
                    await group.cut(m, f"{m.name} did not start 'piseduce-node chain-write' "
                                       f"within {wait:.0f} s")
                    return False
                await asyncio.sleep(0.05)
            return m.alive

        async def wire(m: Member) -> None:
            if not await ready(m):
                return
            while True:
                source = group.predecessor(m)
                if source is None:
                    async with source_started:
                        if group.source.server is None and group.source_host:
                            await group.source.start(group.source_host)
                    break
                if await ready(source) and source is group.predecessor(m):
                    break  # else it was cut meanwhile: its own nearest healthy predecessor then
            if m.alive:
                await group.point(m, source)

        await asyncio.gather(*(wire(m) for m in group.members))

    async def _release(self, group: Group) -> None:
        group.released.set()
        for m in group.members:
            if m.alive:
                await group.send(m, {"release": True})
                with contextlib.suppress(OSError, asyncssh.Error, BrokenPipeError):
                    m.proc.stdin.write_eof()
        for m in group.members:
            if m.proc is not None:
                with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                    await asyncio.wait_for(m.proc.wait_closed(), 10)
            if m.conn is not None:
                m.conn.close()
            if not m.result.done():
                m.result.set_exception(LeftChain(m.failed or "the distribution ended without this board"))
        await group.source.close()


def chain_budget(stall: float, gather: float) -> float:
    """What a chain adds to one board's write: the gathering, the pipeline's fill, re-feeds. The
    chain moves at its slowest card, never slower than the worst case one board's budget assumes,
    so the whole stays one board's time plus this, whatever the number of boards."""
    return gather_seconds(gather) + HOP_SECONDS * MAX_HOPS + REFEEDS * stall
