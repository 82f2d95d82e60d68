"""`piseduce agent monitor`: power and temperature samples on a period, kept for a while.

Each round asks the driver for its measurements (`Driver.sample`), stores them in one transaction
with one timestamp (the round's start, so the series of one round line up on a chart), and drops
the samples older than `monitor_retention_days`. Rounds start every `monitor_period_seconds`
counted from the previous start, not from its end, so the period does not drift with the time the
boards take to answer; a round that overruns its period is cut short rather than pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from piseduce.agent.daemon import run_daemon
from piseduce.agent.drivers.base import Driver
from piseduce.agent.models import Sample
from piseduce.config import AgentConfig
from piseduce.db import write_session

log = logging.getLogger(__name__)

KINDS = ("power", "temperature")
PURGE_EVERY = dt.timedelta(minutes=10)
SUBJECT_MAX = 128


def valid(kind: str, subject: str, value: float) -> bool:
    return kind in KINDS and 0 < len(subject) <= SUBJECT_MAX and math.isfinite(value)


def store(sessions: sessionmaker[Session], at: dt.datetime, samples: list[tuple[str, str, float]]) -> int:
    rows = [
        Sample(time=at, kind=kind, subject=subject, value=float(value))
        for kind, subject, value in samples
        if valid(kind, subject, value)
    ]
    if rows:
        with write_session(sessions) as s:
            s.add_all(rows)
    return len(rows)


def purge(sessions: sessionmaker[Session], before: dt.datetime) -> int:
    with write_session(sessions) as s:
        result = s.execute(delete(Sample).where(Sample.time < before))
        return int(getattr(result, "rowcount", 0) or 0)


class Monitor:
    def __init__(self, config: AgentConfig, sessions: sessionmaker[Session], driver: Driver) -> None:
        self.config = config
        self.sessions = sessions
        self.driver = driver
        self._purged_at: dt.datetime | None = None

    @property
    def period(self) -> float:
        return self.config.monitor_period_seconds

    async def round(self, now: dt.datetime | None = None) -> int:
        """One round: sample, store, purge when due. Returns the number of samples stored."""
        at = now or dt.datetime.now(dt.UTC)
        try:
            async with asyncio.timeout(max(self.period, 5.0)):
                samples = await self.driver.sample()
        except TimeoutError:
            log.warning("monitoring: sampling took more than %.0f s; round skipped", max(self.period, 5.0))
            samples = []
        count = await asyncio.to_thread(store, self.sessions, at, samples)
        if self._purged_at is None or at - self._purged_at >= PURGE_EVERY:
            cutoff = at - dt.timedelta(days=self.config.monitor_retention_days)
            dropped = await asyncio.to_thread(purge, self.sessions, cutoff)
            self._purged_at = at
            if dropped:
                log.info("monitoring: %d samples older than %s dropped", dropped, cutoff.isoformat())
        return count

    async def run_forever(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        log.info("monitoring every %g s, keeping %g days", self.period, self.config.monitor_retention_days)
        next_at = loop.time()
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # a database hiccup or a driver bug must not end the monitoring
                log.exception("monitoring round failed")
            next_at += self.period
            if next_at < loop.time():  # overran: start again from now, do not try to catch up
                next_at = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))


async def run_monitor(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """`piseduce agent monitor`: run until SIGTERM/SIGINT (or `stop`)."""
    async def body(sessions: sessionmaker[Session], driver: Driver, stop: asyncio.Event) -> None:
        await Monitor(config, sessions, driver).run_forever(stop)

    await run_daemon(config, body, tables=("samples", "nodes"), stop=stop)
