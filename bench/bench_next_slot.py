"""Next free slot benchmark (issue 17): 1,000 nodes and 20,000 active bookings on one agent in
SQLite (BENCH_SLOT_NODES and BENCH_SLOT_RESERVATIONS lower them while developing).

Measures POST /api/next-slot through the whole FastAPI stack (httpx ASGI transport, auth and
validation, no network), target ≤ 50 ms median:
  - "4 RPI4B with ≥ 4 GB for 3 hours" from now, and from random later starts
  - 3 named nodes for 2 hours
  - 40 nodes of any model for 6 hours (the answer is further: more of the calendar is read)
and, for information, a request no start fits within the 30 days (the whole calendar swept).
Prints each median and its ratio to the target (ratio < 1 = within target).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers.fake_driver
sys.path.insert(0, str(ROOT / "bench"))

from bench_agent import Sample, Timer, report_to  # noqa: E402

from piseduce import db  # noqa: E402
from piseduce.agent.app import create_app  # noqa: E402
from piseduce.agent.models import Node, Reservation  # noqa: E402
from piseduce.config import load_agent_config  # noqa: E402

NODES = int(os.environ.get("BENCH_SLOT_NODES", "1000"))
RESERVATIONS = int(os.environ.get("BENCH_SLOT_RESERVATIONS", "20000"))
TOKEN = "bench-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}", "X-Piseduce-User": "bench@example.org"}
MODELS = ["RPI4B", "RPI3B+", "RPI4B-8G", "RPI5"]
TARGET_MS = 50.0


def populate(url: str, now: dt.datetime) -> None:
    """A busy site: every node booked from a little before now, 20 bookings of 1 to 24 hours
    each with pauses of 0 to 12 hours between them (some two weeks ahead)."""
    rng = random.Random(17)
    engine = db.make_engine(url)
    gap = dt.timedelta(minutes=10)
    node_rows = [
        {
            "name": f"node-{i:04d}",
            "ip": f"10.1.{i // 250}.{i % 250}",
            "status": "available",
            "properties": {"model": MODELS[i % len(MODELS)], "memory_gb": 4 if i % 4 != 1 else 1},
            "attrs": {},
            "present": True,
            "updated_at": now,
        }
        for i in range(NODES)
    ]
    res_rows: list[dict[str, Any]] = []
    per_node = RESERVATIONS // NODES
    for i in range(NODES):
        t = now - dt.timedelta(hours=rng.uniform(0, 6))
        for _ in range(per_node):
            end = t + dt.timedelta(hours=rng.choice([1, 2, 4, 8, 12, 24]))
            res_rows.append(
                {
                    "node_name": f"node-{i:04d}",
                    "owner": f"user{rng.randrange(200)}@example.org",
                    "bin": "",
                    "start": t,
                    "end": end,
                    "busy_until": end + gap,
                    "status": rng.choice(["configuring", "scheduled", "deployed"]),
                    "params": {},
                    "driver_state": {},
                    "connection": {},
                    "credentials": None,
                    "error": "",
                    "created_at": now,
                    "updated_at": now,
                }
            )
            t = end + gap + dt.timedelta(minutes=rng.choice([0, 0, 10, 30, 60, 180, 360, 720]))
    with db.session_factory(engine).begin() as s:
        s.execute(Node.__table__.insert(), node_rows)
        s.execute(Reservation.__table__.insert(), res_rows)
    engine.dispose()


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
    populate(cfg.database_url, now)
    print(f"{NODES} nodes and {RESERVATIONS} bookings in SQLite; load average {os.getloadavg()[0]:.1f}")
    size = f"{NODES} nodes / {RESERVATIONS} bookings"
    rng = random.Random(5)
    app = create_app(cfg)
    cases: list[tuple[str, dict[str, Any], bool]] = [
        ("4 RPI4B >=4GB for 3 h, from now", {"filters": [{"count": 4, "properties": {"model": "RPI4B", "memory_gb": {"min": 4}}}], "duration_hours": 3}, False),  # noqa: E501
        ("4 RPI4B >=4GB for 3 h, random later start", {"filters": [{"count": 4, "properties": {"model": "RPI4B", "memory_gb": {"min": 4}}}], "duration_hours": 3}, True),  # noqa: E501
        ("3 named nodes for 2 h", {"filters": [{"nodes": ["node-0003", "node-0500", "node-0997"]}], "duration_hours": 2}, True),  # noqa: E501
        ("40 nodes of any model for 6 h", {"filters": [{"count": 40}], "duration_hours": 6}, False),
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
        await c.get("/api/nodes", headers=H)  # warm-up
        for name, body, later in cases:
            samples: list[Sample] = []
            for _ in range(25):
                req = dict(body)
                if later:
                    req["after"] = (now + dt.timedelta(hours=rng.uniform(1, 200))).isoformat()
                with Timer(samples):
                    r = await c.post("/api/next-slot", json=req, headers=H)
                assert r.status_code == 200 and r.json()["start"], r.text
            report_to(f"next free slot: {name} (POST /api/next-slot)", size, samples, TARGET_MS)
        # For information: nothing fits in the 30 days, the whole calendar is swept.
        samples = []
        body = {"filters": [{"count": NODES * 9 // 10}], "duration_hours": 72}
        for _ in range(5):
            with Timer(samples):
                r = await c.post("/api/next-slot", json=body, headers=H)
            assert r.status_code == 200, r.text
        report_to("next free slot: 90% of the nodes for 72 h (swept)", size, samples, None)
    app.state.agent.engine.dispose()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="piseduce-bench-slot-") as tmp:
        t0 = time.perf_counter()
        asyncio.run(measure(Path(tmp)))
        print(f"next-slot benchmark: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
