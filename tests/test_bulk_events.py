"""Events written in bulk (actions.bulk_events: COPY on PostgreSQL, one INSERT of many rows on
SQLite) are the rows the ORM writes one at a time, whatever their text holds."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from helpers.engine_fixtures import add_node, add_reservation, migrated, postgres_database, sqlite_url
from piseduce.agent.actions import CLOCK, add_event, bulk_events
from piseduce.agent.models import Event, Reservation
from piseduce.db import write_session

PG = pytest.param(
    "postgres",
    marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not os.environ.get("PISEDUCE_PG_URL"), reason="PISEDUCE_PG_URL is not set"),
    ],
)

# Tabs, newlines, backslashes, COPY's own markers, quotes and non-ASCII text.
MESSAGES = ("plain", "tab\there", "two\nlines\r\n", "back\\slash \\N \\.", "quote ' \" ;", "é ✓ 日本", "")
WHEN = dt.datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", PG])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with contextlib.ExitStack() as stack:
        pg = request.param == "postgres"
        url = stack.enter_context(postgres_database()) if pg else sqlite_url(tmp_path)
        engine, factory = migrated(url)
        stack.callback(engine.dispose)
        yield factory


def write(sessions: sessionmaker[Session], rid: int, bulk: bool) -> None:
    with write_session(sessions) as s:
        s.info[CLOCK] = lambda: WHEN
        r = s.get(Reservation, rid)
        with bulk_events(s) if bulk else contextlib.nullcontext():
            for i, message in enumerate(MESSAGES):
                add_event(s, r, message, step=f"s{i}", level=("info", "warning", "error")[i % 3])
            add_event(s, None, "no reservation", node="n9", actor="admin@example.org")


def rows(sessions: sessionmaker[Session]) -> list[tuple[object, ...]]:
    with sessions() as s:
        evs = s.scalars(select(Event).order_by(Event.id)).all()
        return [
            (e.reservation_id is not None, e.node_name, e.time, e.level, e.step, e.message, e.kind, e.actor)
            for e in evs
        ]


def test_bulk_events_are_the_rows_the_orm_writes(sessions: sessionmaker[Session]) -> None:
    add_node(sessions, "n1")
    add_node(sessions, "n2")
    one_by_one, bulk = add_reservation(sessions, "n1"), add_reservation(sessions, "n2")
    before = len(rows(sessions))
    write(sessions, one_by_one, bulk=False)
    expected = rows(sessions)[before:]
    write(sessions, bulk, bulk=True)
    got = rows(sessions)[before + len(expected) :]
    assert len(expected) == len(MESSAGES) + 1
    # The node differs (n2): everything else is the same, the time to the microsecond, in UTC.
    assert got == [(e[0], "n2" if e[1] == "n1" else e[1], *e[2:]) for e in expected]
    assert got[0][2] == WHEN and getattr(got[0][2], "tzinfo", None) == dt.UTC
