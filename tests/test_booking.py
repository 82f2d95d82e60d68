"""The calendar (agent/booking.py): random booking sequences never overlap, the turnaround gap
is kept, extend never collides, a refused operation changes nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from piseduce.agent import booking, filters
from piseduce.agent.lifecycle import ACTIVE_STATUSES, CANCELLED
from piseduce.agent.models import Base, Node, Reservation
from piseduce.agent.schemas import Filter
from piseduce.db import make_engine, session_factory, write_session

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
GAP = dt.timedelta(minutes=10)
LIMITS = booking.Limits(
    max_duration=dt.timedelta(hours=3), max_advance=dt.timedelta(days=2), max_nodes_per_user=100, gap=GAP
)
NODES = [f"n{i}" for i in range(4)]
USERS = ["a@x.org", "b@x.org", "c@x.org"]


def fresh() -> Any:
    engine = make_engine("sqlite:///:memory:")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    with write_session(sessions) as s:
        for i, name in enumerate(NODES):
            s.add(Node(name=name, properties={"model": "A" if i % 2 == 0 else "B", "cores": 4 * (i + 1)}))
    return engine, sessions


def snapshot(sessions: Any) -> list[tuple[Any, ...]]:
    with sessions() as s:
        return [
            (r.id, r.node_name, r.start, r.end, r.busy_until, r.status)
            for r in s.scalars(select(Reservation).order_by(Reservation.id))
        ]


def check_invariants(sessions: Any) -> None:
    with sessions() as s:
        rows = list(s.scalars(select(Reservation).where(Reservation.status.in_(ACTIVE_STATUSES))))
    by_node: dict[str, list[Reservation]] = {}
    for r in rows:
        assert r.busy_until == r.end + GAP, "the turnaround gap is part of every hold"
        assert r.end - r.start <= LIMITS.max_duration
        by_node.setdefault(r.node_name, []).append(r)
    for items in by_node.values():
        items.sort(key=lambda r: r.start)
        for a, b in zip(items, items[1:], strict=False):
            assert a.busy_until <= b.start, f"overlap on {a.node_name}: {a.id} and {b.id}"


filters_st = st.one_of(
    st.lists(st.sampled_from(NODES), min_size=1, max_size=3, unique=True).map(lambda ns: [Filter(nodes=ns)]),
    st.tuples(st.integers(1, 3), st.sampled_from(["A", "B", None])).map(
        lambda t: [Filter(count=t[0], properties={"model": t[1]} if t[1] else {})]
    ),
    st.tuples(st.integers(1, 2), st.integers(1, 2)).map(
        lambda t: [
            Filter(count=t[0], properties={"model": "a"}),
            Filter(count=t[1], properties={"cores": {"min": 8}}),
        ]
    ),
)
book_op = st.tuples(
    st.just("book"), st.sampled_from(USERS), filters_st, st.integers(0, 40), st.integers(1, 12)
)
extend_op = st.tuples(st.just("extend"), st.integers(0, 30), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5]))
cancel_op = st.tuples(st.just("cancel"), st.integers(0, 30))
ops_st = st.lists(st.one_of(book_op, book_op, extend_op, cancel_op), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_st)
def test_random_sequences_never_overlap(ops: list[tuple[Any, ...]]) -> None:
    engine, sessions = fresh()
    try:
        for op in ops:
            before = snapshot(sessions)
            try:
                if op[0] == "book":
                    _, user, filters, slot, quarters = op
                    with write_session(sessions) as s:
                        made = booking.book(
                            s,
                            owner=user,
                            filters=filters,
                            start=NOW + dt.timedelta(minutes=15 * slot),
                            duration=dt.timedelta(minutes=15 * quarters),
                            limits=LIMITS,
                            now=NOW,
                        )
                        wanted = sum(len(f.nodes) if f.nodes else (f.count or 0) for f in filters)
                        assert len(made) == wanted, "all or nothing"
                elif op[0] == "extend":
                    _, index, hours = op
                    with write_session(sessions) as s:
                        ids = list(s.scalars(select(Reservation.id).order_by(Reservation.id)))
                        if ids:
                            r = s.get(Reservation, ids[index % len(ids)])
                            assert r is not None
                            booking.extend(s, r, hours, LIMITS, now=NOW)
                else:
                    _, index = op
                    with write_session(sessions) as s:
                        ids = list(s.scalars(select(Reservation.id).order_by(Reservation.id)))
                        if ids:
                            r = s.get(Reservation, ids[index % len(ids)])
                            assert r is not None
                            r.status = CANCELLED
            except booking.BookingError as exc:
                assert exc.status in (409, 422)
                assert snapshot(sessions) == before, "a refused operation changes nothing"
            check_invariants(sessions)
    finally:
        engine.dispose()


def book_one(
    sessions: Any, node: str, start: dt.datetime, hours: float, owner: str = "a@x.org"
) -> Reservation:
    with write_session(sessions) as s:
        (r,) = booking.book(
            s,
            owner=owner,
            filters=[Filter(nodes=[node])],
            start=start,
            duration=dt.timedelta(hours=hours),
            limits=LIMITS,
            now=NOW,
        )
        return r


def test_extend_stops_before_the_next_booking() -> None:
    engine, sessions = fresh()
    try:
        first = book_one(sessions, "n0", NOW, 1)
        book_one(sessions, "n0", NOW + dt.timedelta(hours=2), 1, owner="b@x.org")
        with write_session(sessions) as s:
            r = s.get(Reservation, first.id)
            assert r is not None
            with pytest.raises(booking.BookingError) as err:
                booking.extend(s, r, 1.0, LIMITS, now=NOW)
        assert err.value.status == 409 and "13:50 UTC at the latest" in err.value.detail
        with write_session(sessions) as s:
            r = s.get(Reservation, first.id)
            assert r is not None
            booking.extend(s, r, 50 / 60, LIMITS, now=NOW)
        check_invariants(sessions)
    finally:
        engine.dispose()


def test_time_checks() -> None:
    with pytest.raises(booking.BookingError, match="past"):
        booking.check_times(NOW - dt.timedelta(minutes=6), dt.timedelta(hours=1), LIMITS, NOW)
    booking.check_times(NOW - dt.timedelta(minutes=4), dt.timedelta(hours=1), LIMITS, NOW)
    with pytest.raises(booking.BookingError, match="ahead"):
        booking.check_times(NOW + dt.timedelta(days=3), dt.timedelta(hours=1), LIMITS, NOW)
    with pytest.raises(booking.BookingError, match="maximum"):
        booking.check_times(NOW, dt.timedelta(hours=4), LIMITS, NOW)


@pytest.mark.parametrize(
    ("have", "want", "ok"),
    [
        ("RPI4B", "rpi4b", True),
        ("RPI4B", "RPI3B+", False),
        (4, 4, True),
        (4, "4", True),
        ("4", 4.0, True),
        (4, {"min": 2, "max": 4}, True),
        (5, {"max": 4}, False),
        ("x", {"min": 1}, False),
        (True, True, True),
        (True, 1, False),
        ("true", True, True),
        (None, "x", False),
    ],
)
def test_value_matches(have: Any, want: Any, ok: bool) -> None:
    assert filters.value_matches(have, want) is ok


def test_properties_match_needs_every_key() -> None:
    props = {"Model": "RPI4B", "memory_gb": 4}
    assert filters.properties_match(props, {"model": "rpi4b", "memory_gb": {"min": 2}})
    assert not filters.properties_match(props, {"model": "rpi4b", "cores": 4})
    assert filters.properties_match(props, {})
