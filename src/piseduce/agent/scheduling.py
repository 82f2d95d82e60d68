"""The calendar: which nodes are free when, conflict-free booking and extension (DESIGN §5.2).

A reservation holds its node over `[start, busy_until)`, where `busy_until = end + turnaround gap`.
Two holds of one node never overlap. Booking reads and writes in ONE transaction: the caller gives
a session from `db.write_session` (BEGIN IMMEDIATE on SQLite serialises bookings across processes);
on PostgreSQL the candidate node rows are locked (`SELECT ... FOR UPDATE`, ordered by name so two
bookings never deadlock) and the exclusion constraint `reservations_no_overlap` is the backstop.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, case, func, select, type_coerce
from sqlalchemy.orm import Session

from piseduce.agent.actions import add_event
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.models import (
    ACTIVE_STATUSES,
    CONFIGURING,
    DESTROYING,
    FINAL_STATUSES,
    NODE_AVAILABLE,
    Node,
    Reservation,
    utcnow,
)
from piseduce.agent.schemas import Filter

# A start a little in the past is "now" (clocks of the webui and the agent differ, forms take time).
PAST_TOLERANCE = dt.timedelta(minutes=5)


class BookingError(Exception):
    """A booking or extension that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_duration: dt.timedelta
    max_advance: dt.timedelta
    max_nodes_per_user: int
    gap: dt.timedelta

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(
            max_duration=dt.timedelta(hours=config.max_duration_hours),
            max_advance=dt.timedelta(days=config.max_advance_days),
            max_nodes_per_user=config.max_nodes_per_user,
            gap=dt.timedelta(minutes=config.turnaround_minutes),
        )


def fmt(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------- property filters


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def value_matches(have: Any, want: Any) -> bool:
    """Strings compare case-insensitively, numbers by value, {"min","max"} as an inclusive range."""
    if isinstance(want, Mapping):
        n = _number(have)
        if n is None:
            return False
        lo, hi = want.get("min"), want.get("max")
        return (lo is None or n >= lo) and (hi is None or n <= hi)
    if isinstance(want, bool):
        if isinstance(have, bool):
            return have == want
        return isinstance(have, str) and have.strip().lower() == str(want).lower()
    if isinstance(have, bool):
        return isinstance(want, str) and want.strip().lower() == str(have).lower()
    if isinstance(want, int | float):
        n = _number(have)
        return n is not None and n == float(want)
    if isinstance(want, str):
        if isinstance(have, int | float):
            n = _number(want)
            return n is not None and n == float(have)
        return isinstance(have, str) and have.strip().casefold() == want.strip().casefold()
    return bool(have == want)


def lowered_match(lowered: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """`lowered`: properties with lower-case keys; `wanted`: lower-case keys too."""
    for key, want in wanted.items():
        if key not in lowered:
            return False
        have = lowered[key]
        if isinstance(want, str) and isinstance(have, str):
            # The common case (model=RPI4B), without the general dispatch.
            if have.strip().casefold() != want.strip().casefold():
                return False
        elif not value_matches(have, want):
            return False
    return True


def properties_match(props: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return lowered_match(
        {str(k).lower(): v for k, v in props.items()}, {k.lower(): v for k, v in wanted.items()}
    )


def describe_filter(f: Filter) -> str:
    if f.nodes is not None:
        return "nodes " + ", ".join(f.nodes)
    if not f.properties:
        return "any node"
    parts = []
    for k, v in f.properties.items():
        if isinstance(v, Mapping):
            rng = []
            if v.get("min") is not None:
                rng.append(f">={v['min']:g}")
            if v.get("max") is not None:
                rng.append(f"<={v['max']:g}")
            parts.append(f"{k}{''.join(rng) or ' any'}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


# ---------------------------------------------------------------- busy intervals


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


# ---------------------------------------------------------------- booking


@dataclass(frozen=True)
class NodeRow:
    name: str
    status: str
    properties: dict[str, Any]
    # The same with lower-case keys (filters name properties case-insensitively).
    lowered: dict[str, Any]


# Decoding every node's JSON properties on each booking is the slowest part of it: the list is
# kept per database and reloaded when its fingerprint changes (count, latest update, how many
# are available and present: a status change shows even if a writer forgot updated_at).
_nodes_cache: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], list[NodeRow]]] = (
    weakref.WeakKeyDictionary()
)


def present_nodes(session: Session) -> list[NodeRow]:
    bind = session.get_bind()
    stamp = tuple(
        session.execute(
            select(
                func.count(),
                func.max(Node.updated_at),
                func.sum(case((Node.status == NODE_AVAILABLE, 1), else_=0)),
                func.sum(case((Node.present.is_(True), 1), else_=0)),
            )
        ).one()
    )
    cached = _nodes_cache.get(bind)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    rows = [
        NodeRow(
            r.name,
            r.status,
            dict(r.properties or {}),
            {str(k).lower(): v for k, v in (r.properties or {}).items()},
        )
        for r in session.execute(
            select(Node.name, Node.status, Node.properties).where(Node.present.is_(True)).order_by(Node.name)
        )
    ]
    _nodes_cache[bind] = (stamp, rows)
    return rows


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


def check_times(start: dt.datetime, duration: dt.timedelta, limits: Limits, now: dt.datetime) -> None:
    """Reject (422) a start in the past or too far ahead and a too long duration. Checked before
    any arithmetic on `start`, so absurd dates never overflow."""
    if start < now - PAST_TOLERANCE:
        raise BookingError(422, f'start {fmt(start)} is in the past; use "now" or a future time')
    if start > now + limits.max_advance:
        days = limits.max_advance.total_seconds() / 86400
        raise BookingError(422, f"start {fmt(start)} is more than {days:g} days ahead (max_advance_days)")
    if duration <= dt.timedelta(0):
        raise BookingError(422, "duration_hours must be positive")
    if duration > limits.max_duration:
        hours = limits.max_duration.total_seconds() / 3600
        raise BookingError(422, f"duration exceeds the maximum of {hours:g} h of this agent")


def _lock_nodes(session: Session, names: Sequence[str]) -> None:
    if session.get_bind().dialect.name == "postgresql" and names:
        session.execute(
            select(Node.name).where(Node.name.in_(sorted(names))).order_by(Node.name).with_for_update()
        )


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


def pick_nodes(
    session: Session,
    filters: Sequence[Filter],
    start: dt.datetime,
    until: dt.datetime,
    remote: Iterable[BusyInterval] = (),
    end: dt.datetime | None = None,
    bound: dt.timedelta | None = None,
) -> list[str]:
    """Choose nodes satisfying every filter over [start, until), or raise BookingError(409/422).
    Named filters are served first, then property filters in order, each from what is left."""
    rows = present_nodes(session)
    by_name = {r.name: r for r in rows}
    named = [n for f in filters if f.nodes is not None for n in f.nodes]
    if len(set(named)) != len(named):
        raise BookingError(422, "a node is named in two filters")
    unknown = [n for n in named if n not in by_name]
    if unknown:
        raise BookingError(422, f"unknown node(s): {', '.join(sorted(unknown)[:10])}")

    # Candidates: every node some filter could take; only those are locked and checked.
    candidates: dict[int, list[str]] = {}
    for i, f in enumerate(filters):
        wanted = {k.lower(): v for k, v in f.properties.items()}
        if f.nodes is not None:
            candidates[i] = list(f.nodes)
        else:
            candidates[i] = [
                r.name for r in rows if r.status == NODE_AVAILABLE and lowered_match(r.lowered, wanted)
            ]
    all_candidates = sorted({n for names in candidates.values() for n in names})
    _lock_nodes(session, all_candidates)
    # One range query for the window, filtered here: an IN list of hundreds of names costs more.
    busy = busy_nodes(session, start, until, bound=bound) & set(all_candidates)
    busy |= remote_busy_nodes(remote, start, until)

    when = f"between {fmt(start)} and {fmt(end or until)}"
    if end is not None and until > end:
        when += f" (plus the turnaround gap of {(until - end).total_seconds() / 60:g} min)"
    chosen: list[str] = []
    taken: set[str] = set()
    order = sorted(range(len(filters)), key=lambda i: filters[i].nodes is None)
    for i in order:
        f = filters[i]
        if f.nodes is not None:
            not_available = [n for n in f.nodes if by_name[n].status != NODE_AVAILABLE]
            if not_available:
                n = not_available[0]
                raise BookingError(409, f"node {n} is {by_name[n].status}, not available for booking")
            held = [n for n in f.nodes if n in busy]
            if held:
                raise BookingError(409, f"node(s) {', '.join(held[:10])} already booked {when}")
            chosen.extend(f.nodes)
            taken.update(f.nodes)
            continue
        want = f.count or 0
        free = [n for n in candidates[i] if n not in busy and n not in taken]
        if len(free) < want:
            matching = len(candidates[i])
            raise BookingError(
                409,
                f"only {len(free)} of {want} nodes matching {describe_filter(f)} are free {when} "
                f"({matching} such node(s) in total)",
            )
        picked = free[:want]
        chosen.extend(picked)
        taken.update(picked)
    return chosen


def book(
    session: Session,
    *,
    owner: str,
    filters: Sequence[Filter],
    start: dt.datetime,
    duration: dt.timedelta,
    limits: Limits,
    bin: str = "",
    credentials: str | None = None,
    remote: Iterable[BusyInterval] = (),
    now: dt.datetime | None = None,
) -> list[Reservation]:
    """Book every filter or nothing. Adds the reservations (status `configuring`) and their events
    to `session` and flushes; the caller commits. Raises BookingError."""
    now = now or utcnow()
    check_times(start, duration, limits, now)
    end = start + duration
    until = end + limits.gap
    names = pick_nodes(session, filters, start, until, remote, end=end, bound=hold_bound(session, limits))
    held = user_nodes_at(session, owner, start, end)
    if held + len(names) > limits.max_nodes_per_user:
        raise BookingError(
            409,
            f"you would hold {held + len(names)} nodes at once; "
            f"this agent allows {limits.max_nodes_per_user} per user",
        )
    out = []
    for name in names:
        r = Reservation(
            node_name=name,
            owner=owner,
            bin=bin,
            start=start,
            end=end,
            busy_until=until,
            status=CONFIGURING,
            params={},
            driver_state={},
            connection={},
            credentials=credentials,
            error="",
        )
        session.add(r)
        out.append(r)
    session.flush()
    for r in out:
        add_event(session, r, f"booked by {owner} from {fmt(start)} to {fmt(end)}")
    session.flush()
    return out


# ---------------------------------------------------------------- extension


def next_booking(session: Session, reservation: Reservation) -> dt.datetime | None:
    """When the next active booking of the same node begins (None when there is none)."""
    q = select(func.min(Reservation.start)).where(
        Reservation.node_name == reservation.node_name,
        _active(),
        Reservation.id != reservation.id,
        Reservation.start >= reservation.start,
    )
    return session.scalar(q)


def extend(
    session: Session,
    reservation: Reservation,
    hours: float,
    limits: Limits,
    remote: Iterable[BusyInterval] = (),
    now: dt.datetime | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """Move `reservation`'s end later without colliding with the node's next booking. Returns the
    old and new end; the caller commits (or restores the old end when the driver refuses)."""
    now = now or utcnow()
    if reservation.status in FINAL_STATUSES or reservation.status == DESTROYING:
        raise BookingError(
            409, f"reservation {reservation.id} is {reservation.status}; it cannot be extended"
        )
    if reservation.end <= now:
        raise BookingError(409, f"reservation {reservation.id} has already ended ({fmt(reservation.end)})")
    step = dt.timedelta(hours=hours) if hours > 0 else reservation.end - reservation.start
    if step <= dt.timedelta(0):
        raise BookingError(422, "hours must be positive")
    old_end = reservation.end
    if (old_end - reservation.start) + step > limits.max_duration:
        hours_max = limits.max_duration.total_seconds() / 3600
        latest = reservation.start + limits.max_duration
        raise BookingError(
            409,
            f"a reservation lasts at most {hours_max:g} h on this agent: "
            f"it can end at {fmt(latest)} at the latest",
        )
    new_end = old_end + step
    new_until = new_end + limits.gap
    _lock_nodes(session, [reservation.node_name])
    nxt = next_booking(session, reservation)
    if nxt is not None and nxt < new_until:
        latest = max(nxt - limits.gap, old_end)
        raise BookingError(
            409,
            f"{reservation.node_name} is booked again from {fmt(nxt)}: this reservation can end at "
            f"{fmt(latest)} at the latest",
        )
    clash = [
        b for b in remote if b.node == reservation.node_name and overlaps(old_end, new_until, b.start, b.end)
    ]
    if clash:
        raise BookingError(
            409,
            f"{reservation.node_name} is {clash[0].reason} from {fmt(clash[0].start)}; it cannot be extended",
        )
    reservation.end = new_end
    reservation.busy_until = new_until
    add_event(session, reservation, f"extended from {fmt(old_end)} to {fmt(new_end)}")
    session.flush()
    return old_end, new_end


# ---------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Slot:
    node: str
    start: dt.datetime
    end: dt.datetime
    owner: str
    reservation_id: int
    status: str


def slots(
    session: Session, start: dt.datetime, end: dt.datetime, bound: dt.timedelta | None = None
) -> list[Slot]:
    """Active bookings that hold a node somewhere in [start, end), in one query."""
    q = (
        select(
            Reservation.id,
            Reservation.node_name,
            Reservation.owner,
            Reservation.start,
            Reservation.end,
            Reservation.status,
        )
        .where(
            _active(), Reservation.start < end, Reservation.busy_until > start
        )
        .order_by(Reservation.node_name, Reservation.start)
    )
    if bound is not None:
        q = q.where(Reservation.start >= start - bound)
    return [Slot(r.node_name, r.start, r.end, r.owner, r.id, r.status) for r in session.execute(q)]


def slots_iso(
    session: Session, start: dt.datetime, end: dt.datetime, bound: dt.timedelta | None = None
) -> list[tuple[str, str, str, str, int, str]]:
    """Like `slots`, as (node, start, end, owner, id, status) with ISO-8601 UTC strings. On SQLite
    the stored text is reformatted instead of parsed (the calendar answers thousands of slots)."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    cols = (Reservation.start, Reservation.end)
    if sqlite:
        cols = (type_coerce(Reservation.start, String), type_coerce(Reservation.end, String))  # type: ignore[assignment]
    q = (
        select(Reservation.node_name, *cols, Reservation.owner, Reservation.id, Reservation.status)
        .where(
            _active(), Reservation.start < end, Reservation.busy_until > start
        )
        .order_by(Reservation.node_name, Reservation.start)
    )
    if bound is not None:
        q = q.where(Reservation.start >= start - bound)
    out: list[tuple[str, str, str, str, int, str]] = []
    a: Any
    b: Any
    for node, a, b, owner, rid, status in session.execute(q):
        if sqlite:
            a, b = a.replace(" ", "T") + "Z", b.replace(" ", "T") + "Z"
        else:
            a = a.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
            b = b.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        out.append((node, a, b, owner, rid, status))
    return out


def group_by_node(items: Iterable[Slot]) -> dict[str, list[Slot]]:
    out: dict[str, list[Slot]] = defaultdict(list)
    for s in items:
        out[s.node].append(s)
    return out
