"""The agent's calendar (GET /api/schedule's answer, agent/calendar_cache.py) against a brute force
computation, on random bookings: every node's slots, what each caller sees of them, the remote jobs
merged in. One database and one cache serve every example, with windows drawn from a few, so the
cache is hit across examples and must notice each change (the triggers' calendar generation)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Collection, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from piseduce import db
from piseduce.agent import calendar_cache, calendar_generation, holds
from piseduce.agent.calendar_cache import CalendarCache
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.lifecycle import ACTIVE_STATUSES, FINAL_STATUSES
from piseduce.agent.models import CalendarChange, Node, Reservation
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
    present: Collection[str] = NODES,
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
        if r.node in present and r.start < end and r.end > start:
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
        st.tuples(st.integers(0, 24), st.sampled_from(["end", "status", "owner", "delete", "gone"])),
        max_size=4,
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
        s.execute(update(Node).values(present=True))
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
            if what == "gone":  # no longer in the remote inventory
                s.execute(update(Node).where(Node.name == NODES[k % len(NODES)]).values(present=False))
            elif what == "end":  # given back early, as the destroy route does
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
        present = set(s.scalars(select(Node.name).where(Node.present.is_(True))))
        got = cache.window(s, start, end, BOUND).nodes_json(me, admin, intervals)
    rows = [r for r in rows if r[0] in present]
    answered = _answered(got)
    for slots in answered.values():
        assert [x[0] for x in slots] == sorted(x[0] for x in slots)
    # A remote job may start with a booking: equal starts in any order.
    assert _tied(answered) == _tied(_expected(rows, start, end, me, admin, intervals, present))


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


# --- A change drops only the cached days it touches (calendar_changes, migration 0009) ---

WEEK = (T0, T0 + dt.timedelta(days=7))
TWO_DAYS = (T0, T0 + dt.timedelta(hours=48))


def _booking(node: str, start: dt.datetime, hours: float, owner: str = USERS[0]) -> Reservation:
    end = start + dt.timedelta(hours=hours)
    return Reservation(node_name=node, owner=owner, start=start, end=end, busy_until=end, status="scheduled")


def _week_of_bookings(sessions: sessionmaker[Session]) -> None:
    """Every node held six hours a day, from a day before the week to a day after it."""
    with sessions.begin() as s:
        s.add_all(
            _booking(n, T0 + dt.timedelta(days=d, hours=2 * i), 6, USERS[(d + i) % len(USERS)])
            for d in range(-1, 8)
            for i, n in enumerate(NODES)
        )


class _Reads:
    """What the cache reads from the database: holds.slots_text's [start, end) and nodes (None: all)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.spans: list[tuple[dt.datetime, dt.datetime, Any]] = []
        real = holds.slots_text

        def counted(
            session: Session, start: dt.datetime, end: dt.datetime, bound: Any = None, nodes: Any = None
        ) -> Any:
            self.spans.append((start, end, nodes))
            return real(session, start, end, bound, nodes)

        monkeypatch.setattr(holds, "slots_text", counted)


def _matches(
    sessions: sessionmaker[Session], cache: CalendarCache, window: tuple[dt.datetime, dt.datetime]
) -> None:
    """The cache's answer for `window`, for each user and an admin, against the brute force."""
    with sessions() as s:
        rows = [
            (r.node_name, r.owner, r.start, r.end, r.busy_until, r.status, r.id)
            for r in s.scalars(select(Reservation))
        ]
        present = set(s.scalars(select(Node.name).where(Node.present.is_(True))))
        got = cache.window(s, *window, BOUND)
    rows = [r for r in rows if r[0] in present]
    for me, admin in [(u, False) for u in USERS] + [(USERS[0], True)]:
        assert _tied(_answered(got.nodes_json(me, admin, []))) == _tied(
            _expected(rows, *window, me, admin, [])
        )


SHIFTED = (T0 + dt.timedelta(hours=1), T0 + dt.timedelta(days=6, hours=23))  # built from the days


def test_a_booking_re_reads_only_its_node(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _week_of_bookings(sessions)
    cache = CalendarCache()
    _matches(sessions, cache, WEEK)
    with sessions() as s:
        two_days = cache.window(s, *TWO_DAYS, BOUND)
    reads = _Reads(monkeypatch)
    with sessions.begin() as s:
        s.add(_booking("n-4", T0 + dt.timedelta(days=3, hours=20), 1, USERS[1]))
    _matches(sessions, cache, WEEK)
    _matches(sessions, cache, SHIFTED)  # a new window, from the days the change was patched into
    assert reads.spans == [(*WEEK, ["n-4"])]
    with sessions() as s:  # a window the booking does not touch is still the one cached
        assert cache.window(s, *TWO_DAYS, BOUND) is two_days
    assert len(reads.spans) == 1


def _extend(s: Session) -> None:
    """Day 2's booking on n-1 runs on into day 4 (the days of its old and new span), in place of
    n-1's next two."""
    mine = Reservation.node_name == "n-1"
    for d in (3, 4):
        s.execute(delete(Reservation).where(mine, Reservation.start == T0 + dt.timedelta(days=d)))
    r = s.scalars(select(Reservation).where(mine, Reservation.start == T0 + dt.timedelta(days=2))).one()
    r.end = r.busy_until = T0 + dt.timedelta(days=4, hours=1)


def _cancel(s: Session) -> None:
    s.execute(
        update(Reservation)
        .where(Reservation.node_name == "n-2", Reservation.start == T0 + dt.timedelta(days=5, hours=2))
        .values(status="cancelled")
    )


def _remove_node(s: Session) -> None:
    s.execute(delete(Reservation).where(Reservation.node_name == "n-3"))
    s.execute(delete(Node).where(Node.name == "n-3"))


def _node_gone(s: Session) -> None:
    s.execute(update(Node).where(Node.name == NODES[-1]).values(present=False))


@pytest.mark.parametrize(
    ("change", "nodes"),
    [
        (_extend, ["n-1"]),
        (_cancel, ["n-2"]),
        (_remove_node, ["n-3"]),
        (_node_gone, [NODES[-1]]),
    ],
)
def test_each_change_is_seen_and_only_its_nodes_re_read(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, change: Any, nodes: Any
) -> None:
    _week_of_bookings(sessions)
    cache = CalendarCache()
    _matches(sessions, cache, WEEK)
    reads = _Reads(monkeypatch)
    with sessions.begin() as s:
        change(s)
    _matches(sessions, cache, WEEK)
    _matches(sessions, cache, SHIFTED)
    assert reads.spans == [(*WEEK, nodes)]  # one query: the changed nodes' slots


def test_a_node_back_in_the_inventory_is_listed_again(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _week_of_bookings(sessions)
    back = update(Node).where(Node.name == "n-2")
    with sessions.begin() as s:
        s.execute(back.values(present=False))
    cache = CalendarCache()
    _matches(sessions, cache, WEEK)
    reads = _Reads(monkeypatch)
    with sessions.begin() as s:
        s.execute(back.values(present=True))
    _matches(sessions, cache, WEEK)
    _matches(sessions, cache, SHIFTED)
    assert reads.spans == [(*WEEK, ["n-2"])]


_OTHER_PROCESS = """
import datetime as dt, sys
from piseduce import db
from piseduce.agent.models import Reservation
engine = db.make_engine(sys.argv[1])
start = dt.datetime.fromisoformat(sys.argv[2])
with db.session_factory(engine).begin() as s:
    end = start + dt.timedelta(hours=1)
    s.add(Reservation(node_name="n-2", owner="bob", start=start, end=end, busy_until=end, status="scheduled"))
engine.dispose()
"""


def test_two_workers_see_a_change_by_another_process(sessions: sessionmaker[Session]) -> None:
    """Each worker has its own cache and connections; the change is written by a third process."""
    _week_of_bookings(sessions)
    bind = sessions.kw["bind"]
    url = bind.url.render_as_string(hide_password=False)
    other = db.make_engine(url)
    workers = [(sessions, CalendarCache()), (db.session_factory(other), CalendarCache())]
    try:
        for made, cache in workers:
            _matches(made, cache, WEEK)
            _matches(made, cache, TWO_DAYS)
        at = T0 + dt.timedelta(days=1, hours=20)
        subprocess.run([sys.executable, "-c", _OTHER_PROCESS, url, at.isoformat()], check=True, timeout=120)
        for made, cache in workers:
            _matches(made, cache, WEEK)
            with made() as s:
                slots = cache.window(s, *TWO_DAYS, BOUND).slots("n-2")
            assert any(a == calendar_cache.iso(at) for a, *_ in slots)
    finally:
        other.dispose()


def test_the_changes_table_is_pruned(sessions: sessionmaker[Session]) -> None:
    """Thousands of generations later the table holds the last KEEP or so; a cache further behind
    than those reads everything again, and right."""
    n = calendar_generation.KEEP + 2 * calendar_generation.PRUNE_EVERY
    with sessions.begin() as s:
        s.add_all(_booking(NODES[i % 4], T0 + dt.timedelta(hours=i // 4), 0.5) for i in range(n))
    behind = CalendarCache()
    _matches(sessions, behind, TWO_DAYS)
    with sessions.begin() as s:  # one generation a row, on both databases
        s.execute(update(Reservation).values(owner=USERS[2]))
    with sessions() as s:
        kept = s.scalar(select(func.count()).select_from(CalendarChange))
        oldest = s.scalar(select(func.min(CalendarChange.generation)))
        now = calendar_generation.current(s)
    assert now is not None and oldest is not None and kept is not None
    assert now - oldest <= calendar_generation.KEEP + calendar_generation.PRUNE_EVERY
    assert kept <= 2 * (calendar_generation.KEEP + calendar_generation.PRUNE_EVERY)
    _matches(sessions, behind, TWO_DAYS)


# --- The answer's text, byte for byte (times sliced from the stored text, holds.slots_text) ---

EDGES = [
    # (start, hours): at midnight, with microseconds, ending at midnight, at a second's first instant.
    (T0, 3),
    (T0 + dt.timedelta(hours=5, microseconds=123_456), 2.5),
    (T0 + dt.timedelta(hours=21), 3),
    (T0 + dt.timedelta(days=1, hours=4, seconds=7, microseconds=1), 19),
    (T0 - dt.timedelta(hours=2, microseconds=999_999), 1),
]


def _text_of(slots: dict[str, list[tuple[dt.datetime, dt.datetime, Reservation]]], me: str) -> str:
    """The answer's "nodes" object made from the rows' datetimes with calendar_cache.iso, as the
    uncached encoding would: only the caller's own slots show their owner, id and status."""

    def one(a: dt.datetime, b: dt.datetime, r: Reservation) -> str:
        times = f'"start":"{calendar_cache.iso(a)}","end":"{calendar_cache.iso(b)}"'
        if r.owner != me:
            return "{" + times + "}"
        return (
            "{" + times + f',"owner":{json.dumps(r.owner, ensure_ascii=False)},"mine":true,'
            f'"reservation_id":{r.id},"status":{json.dumps(r.status)}}}'
        )

    nodes = [
        f"{json.dumps(n, ensure_ascii=False)}:[{','.join(one(*x) for x in sorted(v, key=lambda x: x[0]))}]"
        for n, v in sorted(slots.items())
    ]
    return "{" + ",".join(nodes) + "}"


@pytest.mark.parametrize("window", [WEEK, TWO_DAYS, WINDOWS[2], WINDOWS[3]])
def test_the_answer_is_the_rows_times_byte_for_byte(
    sessions: sessionmaker[Session], window: tuple[dt.datetime, dt.datetime]
) -> None:
    with sessions.begin() as s:
        s.add_all(
            _booking(n, a + dt.timedelta(days=d), h, USERS[(d + i) % len(USERS)])
            for d in range(0, 7, 2)
            for i, n in enumerate(NODES)
            for a, h in EDGES[i % 2 :: 2]
        )
    with sessions() as s:
        rows = list(s.scalars(select(Reservation)))
        got = CalendarCache().window(s, *window, BOUND)
    slots: dict[str, list[tuple[dt.datetime, dt.datetime, Reservation]]] = {}
    for r in rows:
        if r.start < window[1] and r.busy_until > window[0]:
            slots.setdefault(r.node_name, []).append((r.start, r.end, r))
    assert any(r.start.microsecond for r in rows) and any(not r.start.microsecond for r in rows)
    for me in USERS:
        assert got.nodes_json(me, False, []) == _text_of(slots, me)


# --- A worker's start reads the coming week (CalendarCache.warm_up, the app's lifespan) ---


def test_warm_up_reads_the_coming_days_once(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _week_of_bookings(sessions)
    cache = CalendarCache()
    with sessions() as s:
        cache.warm_up(s, BOUND, now=T0 + dt.timedelta(hours=5))
    reads = _Reads(monkeypatch)
    for window in (SHIFTED, TWO_DAYS, (T0 + dt.timedelta(hours=7), T0 + dt.timedelta(hours=55))):
        _matches(sessions, cache, window)
    assert reads.spans == []  # every window built from the days read at start


def test_the_app_warms_its_calendar_when_it_starts(
    make_agent_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from piseduce.agent.app import create_app

    app = create_app(make_agent_config())
    today = calendar_cache._day_of(dt.datetime.now(dt.UTC))
    with app.state.agent.sessions.begin() as s:
        s.add(Node(name="n-1", ip="10.0.0.1", properties={}, attrs={}))
        s.add(_booking("n-1", today + dt.timedelta(hours=30), 2))
    with TestClient(app):
        pass  # the lifespan's end waits for the warm-up
    reads = _Reads(monkeypatch)
    with app.state.agent.sessions() as s:
        window = app.state.agent.calendar.window(
            s, today + dt.timedelta(hours=1), today + dt.timedelta(hours=49), BOUND
        )
    app.state.agent.engine.dispose()
    assert reads.spans == []
    assert list(json.loads(window.nodes_json(USERS[1], False, []))) == ["n-1"]
