"""Agent API benchmark: 5,000 nodes and 100,000 reservations in SQLite (issue 15; the sizes can be
lowered with BENCH_AGENT_NODES and BENCH_AGENT_RESERVATIONS while developing).

Measures, through the HTTP API (httpx ASGI transport, the whole FastAPI stack with auth and
validation, no network):
  - booking 4 nodes by properties (POST /api/reservations, count 4)      target < 20 ms
  - GET /api/schedule, 48-hour window                                     target < 50 ms
  - GET /api/schedule, 7-day window                                       target < 100 ms
each schedule four ways (after the time a worker's start spends reading the coming week,
CalendarCache.warm_up, which the cold figures do not benefit from): cold (the worker's cache
emptied: every day read from the database), warm (a window nobody asked, shifted by an hour: built
from the days cached), cached (the same window asked again by other users) and after a booking (the
Reserve page's real case: someone booked one node in the window since: that node's slots are read
again, calendar_changes); the answers' sizes for information. And, for reference, the same booking
through the booking function
alone. Prints the medians with this process's CPU time and the collector's share of it
(gc.callbacks), so that a figure stays readable on a loaded machine, and their ratio to the
targets (ratio < 1 = within target).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers.fake_driver
sys.path.insert(0, str(ROOT / "bench"))

from results import emit  # noqa: E402

from piseduce import db  # noqa: E402
from piseduce.agent import booking, holds  # noqa: E402
from piseduce.agent.api.deps import AgentState  # noqa: E402
from piseduce.agent.app import create_app  # noqa: E402
from piseduce.agent.calendar_cache import CalendarCache  # noqa: E402
from piseduce.agent.models import Node, Reservation  # noqa: E402
from piseduce.agent.schemas import Filter  # noqa: E402
from piseduce.config import load_agent_config  # noqa: E402

NODES = int(os.environ.get("BENCH_AGENT_NODES", "5000"))
RESERVATIONS = int(os.environ.get("BENCH_AGENT_RESERVATIONS", "100000"))
TOKEN = "bench-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}", "X-Piseduce-User": "bench@example.org"}
MODELS = ["RPI4B", "RPI3B+", "RPI4B-8G", "RPI5"]


def populate(url: str, now: dt.datetime) -> None:
    rng = random.Random(42)
    engine = db.make_engine(url)
    gap = dt.timedelta(minutes=10)
    node_rows = [
        {
            "name": f"node-{i:04d}",
            "ip": f"10.1.{i // 250}.{i % 250}",
            "status": "available",
            "properties": {"model": MODELS[i % len(MODELS)], "rack": i // 40},
            "attrs": {},
            "present": True,
            "updated_at": now,
        }
        for i in range(NODES)
    ]
    res_rows = []
    per_node = RESERVATIONS // NODES
    for i in range(NODES):
        t = now - dt.timedelta(days=10) + dt.timedelta(hours=rng.uniform(0, 12))
        for _ in range(per_node):
            dur = dt.timedelta(hours=rng.choice([1, 2, 4, 8, 24, 48]))
            end = t + dur
            status = "ended" if end < now else rng.choice(["configuring", "scheduled", "deployed"])
            res_rows.append(
                {
                    "node_name": f"node-{i:04d}",
                    "owner": f"user{rng.randrange(200)}@example.org",
                    "bin": "",
                    "start": t,
                    "end": end,
                    "busy_until": end + gap,
                    "status": status,
                    "params": {},
                    "driver_state": {},
                    "connection": {},
                    "credentials": None,
                    "error": "",
                    "created_at": now,
                    "updated_at": now,
                }
            )
            t = end + gap + dt.timedelta(hours=rng.uniform(0, 30))
    with db.session_factory(engine).begin() as s:
        s.execute(Node.__table__.insert(), node_rows)
        s.execute(Reservation.__table__.insert(), res_rows)
    engine.dispose()


def report(name: str, samples: list[Sample], target_ms: float) -> None:
    report_to(name, f"{NODES} nodes / {RESERVATIONS} bookings", samples, target_ms)


def report_to(name: str, size: str, samples: list[Sample], target_ms: float | None) -> None:
    """`samples`: (wall, CPU, GC) seconds. The CPU time of this process tells what the wall time
    would be on an idle machine, when other jobs share its cores; GC the collector's share of it."""
    med = statistics.median(s[0] for s in samples) * 1000
    p95 = sorted(s[0] for s in samples)[max(int(len(samples) * 0.95) - 1, 0)] * 1000
    cpu = statistics.median(s[1] for s in samples) * 1000
    gcs = statistics.median(s[2] for s in samples) * 1000
    against = (
        f"target {target_ms:3.0f} ms  ratio {med / target_ms:5.2f} (CPU {cpu / target_ms:4.2f})"
        if target_ms
        else "no target"
    )
    print(
        f"{name:<52} median {med:7.2f} ms (CPU {cpu:6.2f} ms, GC {gcs:5.2f} ms)  p95 {p95:7.2f} ms  {against}"
    )
    emit(f"agent: {name} median", size, med, "ms", target_ms)


def user(k: int) -> dict[str, str]:
    return {**H, "X-Piseduce-User": f"user{k}@example.org"}


async def schedules(c: httpx.AsyncClient, state: AgentState, now: dt.datetime) -> None:
    """Each window four ways: cold (the worker's cache emptied), warm (a window nobody asked, its
    days cached), cached (the same window asked again by other users), and after a booking (the
    Reserve page's real case: someone booked in the window since it was last asked)."""
    day = now.replace(hour=0, minute=0, second=0)
    # What a worker reads when it starts (the app's lifespan; ASGITransport runs none, so the cold
    # figures below are real cold reads): the coming week, before any request.
    started: list[Sample] = []
    for _ in range(3):
        state.calendar = CalendarCache()
        with Timer(started), state.sessions() as s:
            state.calendar.warm_up(s, holds.hold_bound(s, state.limits), now)
    report_to("calendar warm-up at a worker's start (7 days, no request)", f"{NODES} nodes", started, None)
    for n, (hours, target) in enumerate(((48, 50), (168, 100))):
        span = f"{hours // 24}-day" if hours > 48 else f"{hours}-hour"
        params = {"start": day.isoformat(), "end": (day + dt.timedelta(hours=hours)).isoformat()}
        cold: list[Sample] = []
        for i in range(6):
            state.calendar = CalendarCache()
            with Timer(cold):
                r = await c.get("/api/schedule", params=params, headers=user(i))
            assert r.status_code == 200, r.text
        size = len(r.content)
        busy = r.json()["nodes"]
        assert 0 < len(busy) <= NODES and all(busy.values())
        warm: list[Sample] = []
        for i in range(12):
            # A window never asked before, shifted by an hour: built from the days cached.
            start = day + dt.timedelta(hours=i + 1)
            shifted = {"start": start.isoformat(), "end": (start + dt.timedelta(hours=hours)).isoformat()}
            with Timer(warm):
                r = await c.get("/api/schedule", params=shifted, headers=user(i))
            assert r.status_code == 200, r.text
        first = await c.get("/api/schedule", params=params, headers=user(0))
        cached: list[Sample] = []
        for i in range(20):
            with Timer(cached):
                r = await c.get("/api/schedule", params=params, headers=user(i + 1))
            assert r.status_code == 200 and r.json()["nodes"].keys() == first.json()["nodes"].keys()
        after: list[Sample] = []
        for i in range(12):
            # One node booked for an hour somewhere in the window, then the window asked again.
            room = int((day + dt.timedelta(hours=hours) - now) / dt.timedelta(hours=1)) - 2
            at = now + dt.timedelta(hours=1 + (i * 7 + n * 3) % room, minutes=30 * n)
            body = {"filters": [{"count": 1}], "start": at.isoformat(), "duration_hours": 1}
            b = await c.post("/api/reservations", json=body, headers=user(200 + i))
            assert b.status_code == 201, b.text
            with Timer(after):
                r = await c.get("/api/schedule", params=params, headers=user(i + 1))
            assert r.status_code == 200, r.text
            mine = [s for slots in r.json()["nodes"].values() for s in slots if s.get("mine")]
            assert mine, "the new booking is not in the answer"
        report(f"schedule, {span} window, cold (GET /api/schedule)", cold, target)
        report(f"schedule, {span} window, warm (new window, days cached)", warm, target)
        report(f"schedule, {span} window, cached (asked again)", cached, target)
        report(f"schedule, {span} window, after a booking", after, target)
        emit(f"agent: schedule answer, {span} window", f"{NODES} nodes", size / 1e6, "MB", None)


# (wall, CPU, GC) seconds of one operation.
Sample = tuple[float, float, float]


class GcClock:
    """The collector's time, summed from gc.callbacks' start/stop pairs."""

    def __init__(self) -> None:
        self.total = 0.0
        self._began = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._began


GC = GcClock()


class Timer:
    def __init__(self, into: list[Sample]) -> None:
        self.into = into

    def __enter__(self) -> None:
        self.w, self.c, self.g = time.perf_counter(), time.process_time(), GC.total

    def __exit__(self, *exc: object) -> None:
        self.into.append((time.perf_counter() - self.w, time.process_time() - self.c, GC.total - self.g))


async def main() -> None:
    # The folder (its SQLite database of NODES nodes) goes when the run ends, whatever happens.
    with tempfile.TemporaryDirectory(prefix="piseduce-bench-") as tmp:
        await measure(Path(tmp))


async def measure(folder: Path) -> None:
    cfg_path = folder / "config_agent.json"
    cfg_path.write_text(
        json.dumps(
            {
                "auth_token": [TOKEN],
                "db_url": "sqlite:///bench.db",
                "driver": "helpers.fake_driver:FakeDriver",
                "max_nodes_per_user": 100_000,
            }
        )
    )
    cfg = load_agent_config(cfg_path)
    db.upgrade("agent", cfg.database_url)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t0 = time.perf_counter()
    populate(cfg.database_url, now)
    print(
        f"{NODES} nodes and {RESERVATIONS} reservations in SQLite "
        f"({time.perf_counter() - t0:.1f} s to load); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)"
    )

    app = create_app(cfg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
        # Warm-up (imports, caches, the first connection).
        await c.get("/api/nodes", headers=H)

        book: list[Sample] = []
        for i in range(60):
            start = (now + dt.timedelta(days=20, hours=3 * i)).isoformat()
            body = {
                "filters": [{"count": 4, "properties": {"model": MODELS[i % 4]}}],
                "start": start,
                "duration_hours": 2,
            }
            with Timer(book):
                r = await c.post("/api/reservations", json=body, headers=H)
            assert r.status_code == 201, r.text
        report("book 4 nodes (POST /api/reservations, ASGI)", book, 20)

        await schedules(c, app.state.agent, now)

    sessions = app.state.agent.sessions
    limits = app.state.agent.limits
    direct: list[Sample] = []
    for i in range(60):
        start = now + dt.timedelta(days=22, hours=3 * i)
        with Timer(direct), db.write_session(sessions) as s:
            made = booking.book(
                s,
                owner="bench@example.org",
                filters=[Filter(count=4, properties={"model": "RPI5"})],
                start=start,
                duration=dt.timedelta(hours=2),
                limits=limits,
            )
        assert len(made) == 4
    report("book 4 nodes (booking.book + commit, no HTTP)", direct, 20)
    app.state.agent.engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
