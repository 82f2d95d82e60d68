"""PostgreSQL: migrations, the exclusion constraint that forbids overlapping bookings, and the
booking API on it. Runs when PISEDUCE_PG_URL names a cluster (./run test starts one); fails in CI
when it does not."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from helpers.agent_helpers import ADMIN, headers, node_body
from piseduce import db
from piseduce.agent import booking
from piseduce.agent.models import Node, Reservation

pytestmark = pytest.mark.postgres
ALICE = headers("alice@example.org")
BOB = headers("bob@example.org")


def test_migrations_idempotent_and_constraint_present(pg_url: str) -> None:
    head = db.upgrade("agent", pg_url)
    assert db.upgrade("agent", pg_url) == head
    engine = db.make_engine(pg_url)
    try:
        assert db.has_tables(engine, "nodes", "reservations", "actions", "events")
        with engine.connect() as conn:
            kind = conn.execute(
                text("SELECT contype FROM pg_constraint WHERE conname = 'reservations_no_overlap'")
            ).scalar()
            assert kind == "x"  # an exclusion constraint
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        engine.dispose()


def test_exclusion_constraint_rejects_overlaps(pg_url: str) -> None:
    db.upgrade("agent", pg_url)
    engine = db.make_engine(pg_url)
    sessions = db.session_factory(engine)
    t0 = dt.datetime(2031, 1, 1, 10, tzinfo=dt.UTC)

    def res(start: dt.datetime, hours: float, status: str = "configuring") -> Reservation:
        end = start + dt.timedelta(hours=hours)
        return Reservation(
            node_name="n1",
            owner="a@x.org",
            start=start,
            end=end,
            busy_until=end + dt.timedelta(minutes=10),
            status=status,
        )

    try:
        with sessions.begin() as s:
            s.add(Node(name="n1"))
            s.add(res(t0, 1))
        with pytest.raises(IntegrityError), sessions.begin() as s:
            # Starts inside the first one's turnaround gap.
            s.add(res(t0 + dt.timedelta(minutes=65), 1))
        with sessions.begin() as s:
            s.add(res(t0 + dt.timedelta(minutes=70), 1))  # right after the gap
            s.add(res(t0 + dt.timedelta(minutes=30), 1, status="cancelled"))  # not active: ignored
        with sessions() as s:
            assert len(s.scalars(select(Reservation)).all()) == 3
    finally:
        engine.dispose()


@pytest.fixture
async def pg_client(make_agent_config: Any, pg_url: str) -> Any:
    from piseduce.agent.app import create_app

    app = create_app(make_agent_config(pg_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for i in range(1, 4):
            assert (
                await c.post("/api/admin/nodes", json=node_body(f"pi-{i}"), headers=ADMIN)
            ).status_code == 201
        yield c, app
    app.state.agent.engine.dispose()


async def test_booking_api_on_postgres(pg_client: Any) -> None:
    c, _app = pg_client
    body = {"filters": [{"count": 2, "properties": {"model": "rpi4b"}}], "duration_hours": 1}
    r = await c.post("/api/reservations", json=body, headers=ALICE)
    assert r.status_code == 201, r.text
    rid = r.json()["reservations"][0]["id"]
    r = await c.post("/api/reservations", json=body, headers=BOB)
    assert r.status_code == 409 and "only 1 of 2" in r.json()["detail"]
    r = await c.post(f"/api/reservations/{rid}/extend", json={"hours": 2}, headers=ALICE)
    assert r.status_code == 202
    r = await c.post(f"/api/reservations/{rid}/deploy", json={"environment": "tiny"}, headers=ALICE)
    assert r.status_code == 202
    r = await c.post(f"/api/reservations/{rid}/destroy", headers=ALICE)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    sched = await c.get(
        "/api/schedule",
        headers=ALICE,
        params={
            "start": dt.datetime.now(dt.UTC).isoformat(),
            "end": (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat(),
        },
    )
    assert sched.status_code == 200
    # Only held nodes are listed, and the cancelled booking left the calendar (the cache noticed).
    held = sched.json()["nodes"]
    assert held and all(held.values())
    assert rid not in [slot.get("reservation_id") for slots in held.values() for slot in slots]


async def test_constraint_is_the_backstop(pg_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the availability check were wrong, the database refuses the overlap: 409, not 500."""
    c, app = pg_client
    body = {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1}
    assert (await c.post("/api/reservations", json=body, headers=ALICE)).status_code == 201
    monkeypatch.setattr(booking, "busy_nodes", lambda *a, **k: set())
    r = await c.post("/api/reservations", json=body, headers=BOB)
    assert r.status_code == 409 and "same moment" in r.json()["detail"]
    with app.state.agent.sessions() as s:
        assert len(s.scalars(select(Reservation)).all()) == 1


def test_a_connection_the_server_dropped_while_idle_is_replaced_before_use(pg_url: str) -> None:
    # Pooled connections are pinged only after PING_AFTER_IDLE (not once per transaction): one
    # the server dropped meanwhile (a restart, an idle timeout) must still never fail a request.
    engine = db.make_engine(pg_url)
    admin = db.make_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        time.sleep(db.PING_AFTER_IDLE + 0.2)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
        admin.dispose()
