"""The executor's concurrency: N fake nodes deploying at once versus one node alone.

Each node runs the fake driver's deploy (three steps whose run() sleeps `--delay` seconds, then a
connect step), so a node alone takes about 3 x delay plus the engine's own work (one commit with
its event per transition). If nodes advanced in lock-step or one by one, N nodes would take N times
as long; the executor runs them concurrently, so the N-node time should stay close to the 1-node
time. Printed: both times, their ratio, the speed-up over running them one by one, and the commit
rate the engine sustained (events written per second) on SQLite (and on PostgreSQL when
PISEDUCE_PG_URL is set).

    python bench/bench_engine.py [--nodes 100] [--delay 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_driver import FakeDriver  # noqa: E402
from piseduce.agent.engine import Executor  # noqa: E402
from piseduce.agent.models import Event, Node, Reservation, utcnow  # noqa: E402
from piseduce.config import load_agent_config  # noqa: E402
from piseduce.db import make_engine, session_factory, upgrade  # noqa: E402


def book(sessions: sessionmaker[Session], prefix: str, count: int, delay: float) -> list[int]:
    start = utcnow() - dt.timedelta(seconds=1)
    end = start + dt.timedelta(hours=1)
    with sessions() as s:
        rows = []
        for i in range(count):
            s.add(Node(name=f"{prefix}{i}", attrs={"step_delay": delay}))
            r = Reservation(
                node_name=f"{prefix}{i}",
                owner="bench@example.org",
                start=start,
                end=end,
                busy_until=end,
                status="scheduled",
            )
            s.add(r)
            rows.append(r)
        s.commit()
        return [r.id for r in rows]


async def deploy(
    ex: Executor, sessions: sessionmaker[Session], prefix: str, count: int, delay: float
) -> float:
    ids = book(sessions, prefix, count, delay)
    t0 = time.monotonic()
    while True:
        with sessions() as s:
            done = s.scalar(
                select(func.count()).where(Reservation.id.in_(ids), Reservation.status == "deployed")
            )
        if done == count:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)


async def run(url: str, folder: Path, nodes: int, delay: float) -> dict[str, float]:
    upgrade("agent", url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    cfg_path = folder / "config_agent.json"
    cfg_path.write_text(
        json.dumps(
            {
                "auth_token": ["bench-token-0123456789"],
                "db_url": url,
                "poll_interval": 0.05,
                "max_concurrent_actions": max(256, nodes),
            }
        )
    )
    config = load_agent_config(cfg_path, check_files=False)
    ex = Executor(config, sessions, FakeDriver(config, sessions), "bench")
    stop = asyncio.Event()
    task = asyncio.create_task(ex.run_forever(stop))
    try:
        one = await deploy(ex, sessions, "solo", 1, delay)
        with sessions() as s:
            before = s.scalar(select(func.count()).select_from(Event)) or 0
        many = await deploy(ex, sessions, "n", nodes, delay)
        with sessions() as s:
            written = (s.scalar(select(func.count()).select_from(Event)) or 0) - before
    finally:
        stop.set()
        await task
        engine.dispose()
    return {"one": one, "many": many, "events": written}


def report(label: str, nodes: int, res: dict[str, float]) -> None:
    one, many = res["one"], res["many"]
    print(
        f"[{label}] 1 node: {one:.2f} s   {nodes} nodes: {many:.2f} s   "
        f"ratio {many / one:.2f}x the time of one (one by one: {nodes}x)   "
        f"speed-up over one by one {nodes * one / many:.1f}x   "
        f"{res['events'] / many:.0f} events committed/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report(
            "sqlite",
            args.nodes,
            asyncio.run(run(f"sqlite:///{folder / 'agent.db'}", folder, args.nodes, args.delay)),
        )
    pg = os.environ.get("PISEDUCE_PG_URL")
    if pg:
        name = f"bench_engine_{uuid.uuid4().hex[:8]}"
        admin = make_engine(pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                url = pg.rsplit("/", 1)[0] + "/" + name
                report("postgresql", args.nodes, asyncio.run(run(url, Path(tmp), args.nodes, args.delay)))
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
