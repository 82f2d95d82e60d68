"""Who holds which node when: the read side of the calendar (DESIGN §5.2).

A reservation holds its node over `[start, busy_until)`, where `busy_until = end + turnaround gap`.
These queries answer which nodes are held in a window, what a node collides with (in words), the
next booking of a node, how many nodes a user holds, and the calendar's slots. `booking.py` writes.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, String, func, select, type_coerce
from sqlalchemy.orm import Session

from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import Node, Reservation

if TYPE_CHECKING:
    from piseduce.agent.booking import Limits


def fmt(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _active() -> ColumnElement[bool]:
    """An active reservation, for queries bounded in time. `status || ''` keeps the planner off the
    status index: SQLite without statistics takes it for selective and walks every live booking,
    where the (node, start) and start indexes give a short range scan."""
    return (Reservation.status + "").in_(ACTIVE_STATUSES)


def overlaps(a_start: dt.datetime, a_end: dt.datetime, b_start: dt.datetime, b_end: dt.datetime) -> bool:
    return a_start < b_end and b_start < a_end


def busy_nodes(
    session: Session,
    start: dt.datetime,
    until: dt.datetime,
    nodes: Iterable[str] | None = None,
    *,
    exclude_id: int | None = None,
    bound: dt.timedelta | None = None,
) -> set[str]:
    """Names of nodes held by an active reservation somewhere in [start, until). `bound` (no hold
    is longer) turns the query into a short range scan of ix_reservations_start."""
    q = select(Reservation.node_name).where(
        _active(), Reservation.start < until, Reservation.busy_until > start
    )
    if bound is not None:
        q = q.where(Reservation.start >= start - bound)
    if nodes is not None:
        q = q.where(Reservation.node_name.in_(list(nodes)))
    if exclude_id is not None:
        q = q.where(Reservation.id != exclude_id)
    return set(session.scalars(q.distinct()))


def remote_busy_nodes(intervals: Iterable[BusyInterval], start: dt.datetime, until: dt.datetime) -> set[str]:
    return {b.node for b in intervals if overlaps(start, until, b.start, b.end)}


def collisions(
    session: Session,
    names: Sequence[str],
    start: dt.datetime,
    until: dt.datetime,
    remote: Iterable[BusyInterval] = (),
) -> dict[str, str]:
    """For each of `names` held somewhere in [start, until): the first booking (or remote job) it
    collides with, in words with that booking's own window and turnaround gap."""
    out: dict[str, str] = {}
    rows = session.execute(
        select(Reservation.node_name, Reservation.start, Reservation.end, Reservation.busy_until)
        .where(
            _active(),
            Reservation.node_name.in_(list(names)),
            Reservation.start < until,
            Reservation.busy_until > start,
        )
        .order_by(Reservation.start)
    )
    for node, s, e, held_until in rows:
        if node in out:
            continue
        words = f"booked from {fmt(s)} to {fmt(e)}"
        if held_until > e:
            words += f", then kept {(held_until - e).total_seconds() / 60:g} min for the turnaround"
        out[node] = words
    for b in remote:
        if b.node in names and b.node not in out and overlaps(start, until, b.start, b.end):
            out[b.node] = f"{b.reason} from {fmt(b.start)} to {fmt(b.end)}"
    return out


def hold_bound(session: Session, limits: Limits) -> dt.timedelta:
    """No active hold is longer than this: new ones are capped by the maximum duration (plus the
    gap); older ones, made under another config, are measured once per database."""
    bind = session.get_bind()
    longest = _longest.get(bind)
    if longest is None:
        rows = session.execute(
            select(Reservation.start, Reservation.busy_until).where(Reservation.status.in_(ACTIVE_STATUSES))
        )
        longest = max((b - a for a, b in rows), default=dt.timedelta(0))
        _longest[bind] = longest
    return max(longest, limits.max_duration + limits.gap) + dt.timedelta(minutes=1)


_longest: weakref.WeakKeyDictionary[Any, dt.timedelta] = weakref.WeakKeyDictionary()


def user_nodes_at(session: Session, owner: str, start: dt.datetime, end: dt.datetime) -> int:
    """How many nodes `owner` holds at some moment of [start, end)."""
    q = (
        select(func.count())
        .select_from(Reservation)
        .where(
            Reservation.owner == owner,
            Reservation.status.in_(ACTIVE_STATUSES),
            Reservation.start < end,
            Reservation.end > start,
        )
    )
    return int(session.scalar(q) or 0)


def next_booking(session: Session, reservation: Reservation) -> dt.datetime | None:
    """When the next active booking of the same node begins (None when there is none)."""
    q = select(func.min(Reservation.start)).where(
        Reservation.node_name == reservation.node_name,
        _active(),
        Reservation.id != reservation.id,
        Reservation.start >= reservation.start,
    )
    return session.scalar(q)


def present_nodes(session: Session) -> list[str]:
    return list(session.scalars(select(Node.name).where(Node.present.is_(True))))


# The text of a UTC time as SQLite stores it (SQLAlchemy's format: microseconds always written),
# which orders as the times do.
TEXT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _text(column: Any, dialect: str) -> Any:
    """The column as TEXT_FORMAT text: on SQLite the stored text itself, untouched (reformatting it
    in SQL cost more than the rest of the query, in Python less); on PostgreSQL to_char's, which is
    cheaper than Python's isoformat."""
    if dialect == "sqlite":
        return type_coerce(column, String)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS.US")


# (node, start, end, owner, id, status, busy_until), times as TEXT_FORMAT text.
SlotRow = tuple[str, str, str, str, int, str, str]


def slots_text(
    session: Session,
    start: dt.datetime,
    end: dt.datetime,
    bound: dt.timedelta | None = None,
    nodes: Sequence[str] | None = None,
) -> list[SlotRow]:
    """Active bookings that hold a node somewhere in [start, end), in one query, by start time, as
    (node, start, end, owner, id, status, busy_until) with times as TEXT_FORMAT text (the
    calendar answers thousands of slots: no datetime is made); ordered by start, the order of
    ix_reservations_start (covering), so the database does not sort."""
    dialect = session.get_bind().dialect.name
    a, b, held = (_text(c, dialect) for c in (Reservation.start, Reservation.end, Reservation.busy_until))
    q = (
        select(Reservation.node_name, a, b, Reservation.owner, Reservation.id, Reservation.status, held)
        .where(_active(), Reservation.start < end, Reservation.busy_until > start)
        .order_by(Reservation.start)
    )
    if bound is not None:
        q = q.where(Reservation.start >= start - bound)
    if nodes is not None:  # a few nodes' slots (the calendar's cache after a change)
        q = q.where(Reservation.node_name.in_(nodes))
    result = session.connection().execute(q)
    # The driver's plain tuples: SQLAlchemy's Row objects would cost more than the query here,
    # and these columns need no conversion (text, integers).
    rows: list[Any] = list(result.cursor.fetchall())
    result.close()
    return rows
