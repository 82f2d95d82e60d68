"""The next free slot (agent/next_slot.py): its answer is the earliest start `book()` accepts,
checked against a brute-force oracle that tries the real booking at every start of the grid."""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piseduce.agent import booking, next_slot
from piseduce.agent.models import Base, Node
from piseduce.agent.schemas import Filter
from piseduce.db import make_engine, session_factory, write_session

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
GAP = dt.timedelta(minutes=10)
STEP = dt.timedelta(minutes=5)  # every start, end and hold end of these tests is on this grid
LIMITS = booking.Limits(
    max_duration=dt.timedelta(hours=3), max_advance=dt.timedelta(hours=10), max_nodes_per_user=3, gap=GAP
)
NODES = [f"n{i}" for i in range(5)]
USERS = ["a@x.org", "b@x.org"]


def fresh() -> Any:
    engine = make_engine("sqlite:///:memory:")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    with write_session(sessions) as s:
        for i, name in enumerate(NODES):
            s.add(Node(name=name, properties={"model": "A" if i % 2 == 0 else "B", "cores": 4 * (i + 1)}))
    return engine, sessions


def try_book(
    sessions: Any, owner: str, filters: list[Filter], start: dt.datetime, duration: dt.timedelta
) -> bool:
    with sessions() as s:
        try:
            booking.book(
                s, owner=owner, filters=filters, start=start, duration=duration, limits=LIMITS, now=NOW
            )
            return True
        except booking.BookingError:
            return False
        finally:
            s.rollback()


def oracle(
    sessions: Any, owner: str, filters: list[Filter], after: dt.datetime, duration: dt.timedelta
) -> Any:
    t = max(after, NOW)
    while t <= NOW + LIMITS.max_advance:
        if try_book(sessions, owner, filters, t, duration):
            return t
        t += STEP
    return None


def ask(sessions: Any, owner: str, filters: list[Filter], after: dt.datetime, duration: dt.timedelta) -> Any:
    with sessions() as s:
        found = next_slot.next_free(
            s, owner=owner, filters=filters, after=after, duration=duration, limits=LIMITS, now=NOW
        )
    return None if found is None else (next_slot.from_us(found.start), found.nodes)


filters_st = st.one_of(
    st.lists(st.sampled_from(NODES), min_size=1, max_size=2, unique=True).map(lambda ns: [Filter(nodes=ns)]),
    st.tuples(st.integers(1, 3), st.sampled_from(["A", "B", None])).map(
        lambda t: [Filter(count=t[0], properties={"model": t[1]} if t[1] else {})]
    ),
    st.tuples(st.integers(1, 2), st.integers(1, 2)).map(
        lambda t: [Filter(count=t[0], properties={}), Filter(count=t[1], properties={"cores": {"min": 12}})]
    ),
    st.tuples(st.sampled_from(NODES), st.integers(1, 2)).map(
        lambda t: [Filter(nodes=[t[0]]), Filter(count=t[1], properties={"model": "a"})]
    ),
)
booking_st = st.tuples(st.sampled_from(USERS), st.sampled_from(NODES), st.integers(0, 72), st.integers(1, 12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    existing=st.lists(booking_st, max_size=24),
    owner=st.sampled_from(USERS),
    filters=filters_st,
    after_steps=st.integers(-2, 48),
    quarters=st.integers(1, 12),
    by_node=st.booleans(),
)
def test_answer_is_the_earliest_start_book_accepts(
    existing: list[tuple[str, str, int, int]],
    owner: str,
    filters: list[Filter],
    after_steps: int,
    quarters: int,
    by_node: bool,
) -> None:
    engine, sessions = fresh()
    # Both ways of reading the holds: by the candidates' own index (few nodes), or the calendar's.
    few = mock.patch.object(next_slot, "FEW_NODES", 64 if by_node else 0)
    few.start()
    try:
        for user, node, slot, length in existing:
            # Some of these collide and are refused: what stays is a calendar booking itself made.
            try_commit(sessions, user, node, NOW + slot * STEP, length * dt.timedelta(minutes=15))
        after = NOW + after_steps * STEP
        duration = quarters * dt.timedelta(minutes=15)
        try:
            got = ask(sessions, owner, filters, after, duration)
        except booking.BookingError as exc:
            assert exc.status in (409, 422)
            assert oracle(sessions, owner, filters, after, duration) is None, "refused, yet a start fits"
            return
        expected = oracle(sessions, owner, filters, after, duration)
        assert (got[0] if got else None) == expected
        if got:
            with write_session(sessions) as s:
                made = booking.book(
                    s, owner=owner, filters=filters, start=got[0], duration=duration, limits=LIMITS, now=NOW
                )
            assert tuple(r.node_name for r in made) == got[1], "the nodes the booking then takes"
    finally:
        few.stop()
        engine.dispose()


def try_commit(sessions: Any, user: str, node: str, start: dt.datetime, duration: dt.timedelta) -> None:
    try:
        with write_session(sessions) as s:
            booking.book(
                s,
                owner=user,
                filters=[Filter(nodes=[node])],
                start=start,
                duration=duration,
                limits=LIMITS,
                now=NOW,
            )
    except booking.BookingError:
        pass


def test_the_turnaround_gap_is_kept() -> None:
    engine, sessions = fresh()
    try:
        try_commit(sessions, "b@x.org", "n0", NOW, dt.timedelta(hours=1))
        got = ask(sessions, "a@x.org", [Filter(nodes=["n0"])], NOW, dt.timedelta(hours=1))
        assert got is not None and got[0] == NOW + dt.timedelta(hours=1) + GAP
        # The next booking's start must leave this one its own gap: 1 h + gap before 14:00 fits.
        try_commit(sessions, "b@x.org", "n1", NOW + dt.timedelta(hours=2), dt.timedelta(hours=1))
        got = ask(sessions, "a@x.org", [Filter(nodes=["n1"])], NOW, dt.timedelta(minutes=110))
        assert got is not None and got[0] == NOW
        got = ask(sessions, "a@x.org", [Filter(nodes=["n1"])], NOW, dt.timedelta(minutes=115))
        assert got is not None and got[0] == NOW + dt.timedelta(hours=3) + GAP
    finally:
        engine.dispose()


def test_the_per_user_limit_is_kept() -> None:
    engine, sessions = fresh()
    try:
        for node in ("n0", "n1"):
            try_commit(sessions, "a@x.org", node, NOW, dt.timedelta(hours=2))
        # Three free nodes now, but a@ holds 2 of the 3 allowed until 14:00.
        got = ask(sessions, "a@x.org", [Filter(count=2)], NOW, dt.timedelta(hours=1))
        assert got is not None and got[0] == NOW + dt.timedelta(hours=2)
        got = ask(sessions, "b@x.org", [Filter(count=2)], NOW, dt.timedelta(hours=1))
        assert got is not None and got[0] == NOW
        with pytest.raises(booking.BookingError) as exc:
            ask(sessions, "b@x.org", [Filter(count=4)], NOW, dt.timedelta(hours=1))
        assert exc.value.status == 409 and "per user" in exc.value.detail
    finally:
        engine.dispose()


def test_none_within_max_advance_and_bad_requests() -> None:
    engine, sessions = fresh()
    try:
        try_commit(sessions, "b@x.org", "n0", NOW, dt.timedelta(hours=3))
        assert (
            ask(
                sessions,
                "a@x.org",
                [Filter(nodes=["n0"])],
                NOW + dt.timedelta(hours=9),
                dt.timedelta(hours=1),
            )
            is not None
        )
        with pytest.raises(booking.BookingError) as exc:
            ask(sessions, "a@x.org", [Filter(nodes=["zz"])], NOW, dt.timedelta(hours=1))
        assert exc.value.status == 422
        with pytest.raises(booking.BookingError) as exc:
            ask(sessions, "a@x.org", [Filter(count=1)], NOW, dt.timedelta(hours=4))
        assert exc.value.status == 422 and "maximum" in exc.value.detail
        with pytest.raises(booking.BookingError) as exc:
            ask(sessions, "a@x.org", [Filter(count=3, properties={"model": "B"})], NOW, dt.timedelta(hours=1))
        assert exc.value.status == 409
    finally:
        engine.dispose()
