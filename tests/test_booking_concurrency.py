"""Several OS processes, each with its own app and database engine (as several uvicorn workers
have), book the same nodes at the same instant: never a double booking, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing as mp
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from helpers.agent_helpers import ADMIN, headers, node_body, write_config
from piseduce import db
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import Reservation
from piseduce.config import load_agent_config

WORKERS = 4
ROUNDS = 4


async def _worker(cfg_path: str, index: int, base: str, barrier: Any) -> list[tuple[int, int]]:
    from piseduce.agent.app import create_app

    app = create_app(load_agent_config(cfg_path))
    h = headers(f"user{index}@example.org")
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for i in range(ROUNDS):
            start = (dt.datetime.fromisoformat(base) + dt.timedelta(hours=2 * i)).isoformat()
            await asyncio.to_thread(barrier.wait, 60)
            named = await c.post(
                "/api/reservations",
                headers=h,
                json={"filters": [{"nodes": ["pi-1", "pi-2"]}], "start": start, "duration_hours": 1},
            )
            counted = await c.post(
                "/api/reservations",
                headers=h,
                json={
                    "filters": [{"count": 2, "properties": {"model": "RPI3B+"}}],
                    "start": start,
                    "duration_hours": 1,
                },
            )
            out.append((named.status_code, counted.status_code))
    app.state.agent.engine.dispose()
    return out


def worker(cfg_path: str, index: int, base: str, barrier: Any, results: Any) -> None:
    try:
        results.put((index, asyncio.run(_worker(cfg_path, index, base, barrier))))
    except BaseException as exc:  # the parent must hear about any failure
        results.put((index, repr(exc)))
        raise


async def _setup(cfg_path: Path) -> None:
    from piseduce.agent.app import create_app

    app = create_app(load_agent_config(cfg_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for i in range(1, 6):
            body = node_body(f"pi-{i}", "RPI4B" if i <= 2 else "RPI3B+")
            assert (await c.post("/api/admin/nodes", json=body, headers=ADMIN)).status_code == 201
    app.state.agent.engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_bookings_never_double_book(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    db_url = request.getfixturevalue("pg_url") if database == "postgres" else None
    cfg_path = write_config(tmp_path, db_url)
    cfg = load_agent_config(cfg_path)
    db.upgrade("agent", cfg.database_url)
    asyncio.run(_setup(cfg_path))

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    base = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0).isoformat()
    procs = [
        ctx.Process(target=worker, args=(str(cfg_path), i, base, barrier, results)) for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    for index, res in got.items():
        assert isinstance(res, list), f"worker {index} failed: {res}"

    for i in range(ROUNDS):
        named = [got[w][i][0] for w in range(WORKERS)]
        counted = [got[w][i][1] for w in range(WORKERS)]
        assert set(named) <= {201, 409} and set(counted) <= {201, 409}, (named, counted)
        # pi-1 + pi-2 for one booker; 2 of the 3 RPI3B+ for one booker (the third alone is not enough).
        assert named.count(201) == 1, named
        assert counted.count(201) == 1, counted

    engine = db.make_engine(cfg.database_url)
    try:
        with db.session_factory(engine)() as s:
            rows = list(s.scalars(select(Reservation).where(Reservation.status.in_(ACTIVE_STATUSES))))
    finally:
        engine.dispose()
    assert len(rows) == ROUNDS * 4
    by_node: dict[str, list[Reservation]] = {}
    for r in rows:
        by_node.setdefault(r.node_name, []).append(r)
    for items in by_node.values():
        items.sort(key=lambda r: r.start)
        for a, b in zip(items, items[1:], strict=False):
            assert a.busy_until <= b.start, f"double booking of {a.node_name}"
