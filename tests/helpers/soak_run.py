"""One soak run end to end (bench/bench_soak.py prints it, tests/test_soak.py asserts it): the
site up, the load and the kills, the invariants sampled all along, a bounded settle, the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.soak_checks import Databases, Figures, as_lines, log_excerpts
from helpers.soak_load import Ledger, Load, LoadOptions
from helpers.soak_site import SiteOptions, SoakSite

SAMPLE_EVERY = 2.0


@dataclass
class SoakResult:
    figures: Figures
    ledger: Ledger
    kills: dict[str, int]
    elapsed: float
    dead: str | None = None  # a process of the site that stopped on its own
    tracebacks: list[str] = field(default_factory=list)
    unwatched: int = 0

    def lines(self) -> list[str]:
        out = as_lines(self.figures, self.ledger, self.kills, self.elapsed)
        if self.dead:
            out.append(f"stopped on its own      {self.dead}")
        return out

    def details(self, limit: int = 8) -> list[str]:
        """What a failing run shows: the stuck, lost, orphans, double bookings and 5xx, by name."""
        f, out = self.figures, []
        for title, items in (
            ("stuck", f.stuck), ("lost", f.lost), ("orphan jobs", sorted(f.orphan_jobs)),
            ("double bookings", sorted(f.double_bookings)),
            ("failed without reason", f.failed_without_reason),
            ("5xx", self.ledger.server_errors), ("tracebacks", self.tracebacks),
        ):
            out += [f"{title}: {x}" for x in items[:limit]]
        out += [f"failure reason x{n}: {why}" for why, n in f.failure_reasons.most_common(limit)]
        return out


async def _sampler(dbs: Databases, figures: Figures, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.to_thread(dbs.sample, figures)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


async def soak(folder: Path, site_opts: SiteOptions, load_opts: LoadOptions, settle_s: float,
               progress: bool = False) -> SoakResult:
    t0 = time.monotonic()
    site = SoakSite(folder, site_opts)
    await asyncio.to_thread(site.start)
    say = print if progress else (lambda *_, **__: None)
    say(f"  site up in {time.monotonic() - t0:.0f} s: {site_opts.boards} Pis ({site_opts.board_mode}), "
        f"g5k {site_opts.g5k_clusters}; load for up to {load_opts.seconds:.0f} s", flush=True)
    dbs = Databases(site)
    figures, ledger = Figures(), Ledger()
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sampler(dbs, figures, stop))
    try:
        load = Load(site, load_opts, ledger)
        await load.run()
        say(f"  load done at {time.monotonic() - t0:.0f} s: {ledger.accepted()} reservations accepted; "
            "settling", flush=True)
        deadline = time.monotonic() + settle_s
        unwatched = await load.finish(settle_s)
        while await asyncio.to_thread(dbs.open_reservations) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
        stop.set()
        await sampler
        await asyncio.to_thread(dbs.sample, figures)
        await asyncio.to_thread(dbs.final, figures, ledger)
        dead = site.dead()
        kills = dict(ledger.kills)
        elapsed = time.monotonic() - t0
        return SoakResult(figures, ledger, kills, elapsed, dead, log_excerpts(folder), unwatched)
    finally:
        stop.set()
        sampler.cancel()
        dbs.close()
        await asyncio.to_thread(site.stop)
