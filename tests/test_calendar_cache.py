"""The agent's calendar (GET /api/schedule's answer, agent/calendar_cache.py) against a brute force
computation, on random bookings: every node's slots, what each caller sees of them, the remote jobs
merged in. One database and one cache serve every example, with windows drawn from a few, so the
cache is hit across examples and must notice each change (the triggers' calendar generation)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from piseduce import db
from piseduce.agent import calendar_generation
from piseduce.agent.calendar_cache import CalendarCache
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.lifecycle import ACTIVE_STATUSES, FINAL_STATUSES
from piseduce.agent.models import Node, Reservation
from piseduce.protocol import Schedule

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
NODES = ["n-1", "n-2", "n-3", "n-4", 'odd "name" é']
USERS = ["alice@example.org", "bob@example.org", "carol@example.org"]
WINDOWS = [
    (T0, T0 + dt.timedelta(hours=48)),
    (T0 + dt.timedelta(hours=5), T0 + dt.timedelta(days=7)),
    # Not day-aligned, with microseconds: built from the days the others read (the day cache).
    (T0 + dt.timedelta(hours=13, minutes=7, microseconds=500_000), T0 + dt.timedelta(hours=61, seconds=1)),
    (T0 - dt.timedelta(hours=30), T0 + dt.timedelta(hours=2, microseconds=1)),
]
BOUND = dt.timedelta(hours=80)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path}/agent.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    db.upgrade("agent", url)
    engine = db.make_engine(url)
    made = db.session_factory(engine)
    with made.begin() as s:
        s.add_all(Node(name=n, ip="10.0.0.1", properties={}, attrs={}) for n in NODES)
    yield made
    engine.dispose()


booking_st = st.tuples(
    st.sampled_from(NODES),
    st.sampled_from(USERS),
    st.integers(0, 30 * 60),  # minutes free before it on its node (holds never overlap on a node)
    st.integers(1, 72 * 60),  # duration in minutes
    st.integers(0, 30),  # turnaround gap in minutes
    st.sampled_from(ACTIVE_STATUSES + FINAL_STATUSES),
)
FIRST = T0 - dt.timedelta(hours=90)  # the first holds begin before the windows, the last end after
remote_st = st.lists(
    st.tuples(st.sampled_from(NODES + ["not-a-node"]), st.integers(-600, 12_000), st.integers(1, 3000)),
    max_size=3,
)


def _expected(
    rows: list[tuple[str, str, dt.datetime, dt.datetime, dt.datetime, str, int]],
    start: dt.datetime,
    end: dt.datetime,
    me: str,
    admin: bool,
    remote: list[BusyInterval],
) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for node, owner, a, b, held, status, rid in rows:
        if status in ACTIVE_STATUSES and a < end and held > start:
            seen = admin or owner == me
            out.setdefault(node, []).append(
                (
                    a,
                    b,
                    owner if seen else None,
                    owner == me,
                    rid if seen else None,
                    status if seen else "",
                    "",
                )
            )
    for r in remote:
        if r.node in NODES and r.start < end and r.end > start:
            out.setdefault(r.node, []).append((r.start, r.end, None, False, None, "", r.reason))
    return {n: sorted(v, key=lambda x: x[0]) for n, v in out.items()}


def _answered(text: str) -> dict[str, list[tuple[Any, ...]]]:
    sched = Schedule.model_validate({"nodes": json.loads(text)})
    return {
        n: [(s.start, s.end, s.owner, s.mine, s.reservation_id, s.status, s.reason) for s in slots]
        for n, slots in sched.nodes.items()
    }


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    bookings=st.lists(booking_st, max_size=25),
    changes=st.lists(
        st.tuples(st.integers(0, 24), st.sampled_from(["end", "status", "owner", "delete"])), max_size=4
    ),
    remote=remote_st,
    window=st.sampled_from(WINDOWS),
    me=st.sampled_from(USERS),
    admin=st.booleans(),
)
def test_calendar_matches_brute_force(
    sessions: sessionmaker[Session],
    bookings: list[tuple[str, str, int, int, int, str]],
    changes: list[tuple[int, str]],
    remote: list[tuple[str, int, int]],
    window: tuple[dt.datetime, dt.datetime],
    me: str,
    admin: bool,
) -> None:
    cache = _cache(sessions)
    start, end = window
    with sessions.begin() as s:
        s.execute(delete(Reservation))
        free = dict.fromkeys(NODES, FIRST)
        for node, owner, before, minutes, gap, status in bookings:
            a = free[node] + dt.timedelta(minutes=before)
            b = a + dt.timedelta(minutes=minutes)
            free[node] = b + dt.timedelta(minutes=gap)
            s.add(
                Reservation(
                    node_name=node,
                    owner=owner,
                    start=a,
                    end=b,
                    busy_until=b + dt.timedelta(minutes=gap),
                    status=status,
                )
            )
    # Ask once (filling the cache), then change some bookings as the engine and the API do.
    with sessions() as s:
        cache.window(s, start, end, BOUND)
    with sessions.begin() as s:
        ids = sorted(s.scalars(select(Reservation.id)))
        for k, what in changes:
            if not ids:
                break
            rid = ids[k % len(ids)]
            if what == "end":  # given back early, as the destroy route does
                r = s.get(Reservation, rid)
                if r is None:
                    continue
                r.end = r.busy_until = r.start + dt.timedelta(minutes=1)
                s.flush()
            elif what == "status":
                s.execute(update(Reservation).where(Reservation.id == rid).values(status="ended"))
            elif what == "owner":
                s.execute(
                    update(Reservation).where(Reservation.id == rid).values(owner=USERS[k % len(USERS)])
                )
            else:
                s.execute(delete(Reservation).where(Reservation.id == rid))
    intervals = [
        BusyInterval(n, T0 + dt.timedelta(minutes=a), T0 + dt.timedelta(minutes=a + d)) for n, a, d in remote
    ]
    with sessions() as s:
        rows = [
            (r.node_name, r.owner, r.start, r.end, r.busy_until, r.status, r.id)
            for r in s.scalars(select(Reservation))
        ]
        got = cache.window(s, start, end, BOUND).nodes_json(me, admin, intervals)
    answered = _answered(got)
    for slots in answered.values():
        assert [x[0] for x in slots] == sorted(x[0] for x in slots)
    # A remote job may start with a booking: equal starts in any order.
    assert _tied(answered) == _tied(_expected(rows, start, end, me, admin, intervals))


def _tied(found: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    return {n: sorted(v, key=repr) for n, v in found.items()}


_caches: dict[int, CalendarCache] = {}


def _cache(sessions: sessionmaker[Session]) -> CalendarCache:
    """One cache per database, kept across the examples (as a worker keeps it across requests)."""
    return _caches.setdefault(id(sessions), CalendarCache())


def test_a_change_by_any_writer_bumps_the_generation(sessions: sessionmaker[Session]) -> None:
    """Progress writes leave the counter alone; a status, a window, a node's presence move it."""
    with sessions.begin() as s:
        s.add(
            Reservation(
                node_name="n-1",
                owner=USERS[0],
                start=T0,
                end=T0 + dt.timedelta(hours=1),
                busy_until=T0 + dt.timedelta(hours=1),
                status="scheduled",
            )
        )
    with sessions() as s:
        before = calendar_generation.current(s)
    assert before is not None
    with sessions.begin() as s:
        s.execute(update(Reservation).values(error="a progress note"))
    with sessions() as s:
        assert calendar_generation.current(s) == before
    for change in (
        update(Reservation).values(status="deployed"),
        update(Reservation).values(end=T0 + dt.timedelta(hours=2)),
        update(Node).where(Node.name == "n-3").values(present=False),
        delete(Reservation),
    ):
        with sessions.begin() as s:
            s.execute(change)
        with sessions() as s:
            now = calendar_generation.current(s)
        assert now is not None and now > before, change
        before = now
