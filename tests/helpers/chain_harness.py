"""A pipelined distribution without the engine: the driver's own `Distributor` (raspberry driver,
distribution.py) runs a chain on the simulated cluster, each board's part being what its
`write_image` step does (join, then write) with a minimal step context; the group is every board
of the run. Used by bench/bench_net_rpi.py and tests/test_rpi_chain.py (a short stall window)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh

from piseduce.agent.drivers.base import NodeView, ReservationView, StepContext, StepError
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.card import stall_seconds
from piseduce.agent.drivers.raspberry.distribution import Distributor
from piseduce.agent.drivers.raspberry.ops import Board
from piseduce.agent.drivers.raspberry.progress import PhaseProgress
from piseduce.sim.rpi.cluster import RpiCluster

NOW = dt.datetime.now(dt.UTC)


class ChainContext(StepContext):
    """A write_image step's view of its reservation: events kept in memory."""

    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        self.reservation = ReservationView(0, NodeView(name, attrs=attrs), "bench", "bench", NOW, NOW,
                                         "deploying", params={"environment": "bench"})
        self.events: list[str] = []

    async def progress(self, percent: int, message: str | None = None) -> None:
        return None

    async def log(self, message: str, level: str = "info") -> None:
        self.events.append(message)

    async def save_node_attrs(self, **attrs: Any) -> None:
        self.node.attrs.update(attrs)


@dataclass
class ChainOps:
    """What the distribution asks of `RpiOps`: the boards as the simulator describes them."""

    cluster: RpiCluster
    key: asyncssh.SSHKey
    expected_members: int
    poll: float = 0.05
    boot_wait: float = 0.0
    connect_timeout: float = 30.0
    nfs_keys: dict[str, str] = field(default_factory=dict)

    def board(self, ctx: StepContext) -> Board:
        b = self.cluster.board(ctx.node.name)
        host, port = b.address
        return Board(b.name, host, port, b.identity.serial, "sw", b.identity.port)

    async def nfs_connection(self, ctx: StepContext) -> asyncssh.SSHClientConnection:
        b = self.board(ctx)
        target = sshc.Target(b.ip, b.ssh_port, "root", self.key, pinned=self.nfs_keys[b.name], timeout=30)
        conn, _ = await sshc.connect(target)
        return conn

    async def port_is_off(self, ctx: StepContext) -> bool:
        return not self.cluster.port_enabled(self.board(ctx).port)


class ChainDistributor(Distributor):
    """The group is every board of the run (no database of reservations to count them in)."""

    def expected(self, ctx: StepContext, environment: str) -> int:
        return cast(ChainOps, self.ops).expected_members


@dataclass
class ChainRun:
    took: float  # until every healthy board had the whole image on its card
    sent: int  # image bytes the agent sent (zero runs included)
    results: dict[str, dict[str, Any] | str]  # a board's write result, or why it failed
    events: dict[str, list[str]]
    wire: int = 0  # the bytes those took on the wire (a zero run is a frame header)


async def run_chain(cluster: RpiCluster, names: list[str], key: asyncssh.SSHKey, image: Path, sha: str, *,
                    sparse: bool = False, kill: str | None = None, kill_after: int = 0,
                    unplug: str | None = None, stall: float | None = None) -> ChainRun:
    """One distribution to `names`; `kill`: that board's PoE port goes off once it has
    `kill_after` bytes; `unplug`: instead its cable is out (for a minute). `stall`: the stall
    window (the agent's, `card.stall_seconds()`, by default)."""
    ops = ChainOps(cluster, key, len(names),
                   nfs_keys={n: str(cluster.board(n).describe()["nfs_host_key"]) for n in names})
    dist = ChainDistributor(cast(Any, ops), (lambda: stall) if stall else stall_seconds)
    contexts = {n: ChainContext(n, {"card_zeroed": sparse}) for n in names}
    members: dict[str, Any] = {}
    groups: list[Any] = []

    async def one(name: str) -> dict[str, Any] | str:
        ctx = contexts[name]
        group, member = await dist.join(ctx, "bench", image, sha, PhaseProgress(ctx))
        members[name] = member
        if group not in groups:
            groups.append(group)
        try:
            return await dist.write(group, member, sparse=sparse)
        except StepError as exc:
            return str(exc)

    async def killer() -> None:
        victim = kill or unplug
        while victim is not None:
            m = members.get(victim)
            if m is not None and m.received >= kill_after:
                if kill:
                    cluster.set_port_enabled(cluster.board(kill).identity.port, False)
                else:
                    await cluster.link_down(victim, 60.0)
                return
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    watcher = asyncio.create_task(killer())
    results = await asyncio.gather(*(one(n) for n in names))
    took = time.perf_counter() - started
    if not watcher.done():
        watcher.cancel()
    for g in groups:  # the boards are released before the next run
        await g.released.wait()
    sent = sum(g.source.sent for g in groups)
    return ChainRun(took, sent, dict(zip(names, results, strict=True)),
                    {n: c.events for n, c in contexts.items()}, sum(g.source.wire for g in groups))
