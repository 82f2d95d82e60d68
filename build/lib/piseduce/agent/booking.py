"""The calendar's write side: conflict-free booking and extension (DESIGN §5.2); `holds.py` answers
which nodes are held when.

A reservation holds its node over `[start, busy_until)`, where `busy_until = end + turnaround gap`.
Two holds of one node never overlap. Booking reads and writes in ONE transaction: the caller gives
a session from `db.write_session` (BEGIN IMMEDIATE on SQLite serialises bookings across processes);
on PostgreSQL the candidate node rows are locked (`SELECT ... FOR UPDATE`, ordered by name so two
bookings never deadlock) and the exclusion constraint `reservations_no_overlap` is the backstop.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from piseduce.agent import lifecycle
from piseduce.agent.actions import add_event
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.filters import describe_filter, lowered_match
from piseduce.agent.holds import (
    busy_nodes,
    collisions,
    fmt,
    hold_bound,
    next_booking,
    overlaps,
    remote_busy_nodes,
    user_nodes_at,
)
from piseduce.agent.lifecycle import CONFIGURING
from piseduce.agent.models import NODE_AVAILABLE, Node, Reservation
from piseduce.agent.schemas import Filter
from piseduce.dbtypes import utcnow

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

    refuse = Refusals(session, start, until, end, remote)
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
                raise refuse.named(held)
            chosen.extend(f.nodes)
            taken.update(f.nodes)
            continue
        want = f.count or 0
        free = [n for n in candidates[i] if n not in busy and n not in taken]
        if len(free) < want:
            raise refuse.short(f, len(free), want, candidates[i], busy)
        picked = free[:want]
        chosen.extend(picked)
        taken.update(picked)
    return chosen


@dataclass
class Refusals:
    """The 409s of a booking, in words: a collision quotes the booking it collides with (that
    booking's own window), never only the window that was asked for."""

    session: Session
    start: dt.datetime
    until: dt.datetime
    end: dt.datetime | None
    remote: Iterable[BusyInterval]

    def _gap_minutes(self) -> float:
        return (self.until - self.end).total_seconds() / 60 if self.end is not None else 0.0

    def _busy_words(self, names: Sequence[str]) -> str:
        found = collisions(self.session, names, self.start, self.until, self.remote)
        return ", ".join(f"{n} ({found[n]})" if n in found else n for n in names)

    def named(self, held: list[str]) -> BookingError:
        gap_note = ""
        if self.end is not None and self._gap_minutes() > 0:
            # Free over the requested window itself: only this booking's own gap collides.
            inside = busy_nodes(self.session, self.start, self.end, held)
            inside |= remote_busy_nodes(self.remote, self.start, self.end)
            if any(n not in inside for n in held):
                gap = self._gap_minutes()
                gap_note = f" (a booking keeps its node {gap:g} min after its end for the turnaround)"
        those = "that booking" if len(held) == 1 else "those bookings"
        return BookingError(
            409,
            f"already taken: {self._busy_words(held[:10])}; choose another node or a time outside "
            f"{those}{gap_note}",
        )

    def short(self, f: Filter, free: int, want: int, candidates: list[str], busy: set[str]) -> BookingError:
        when = f"between {fmt(self.start)} and {fmt(self.end or self.until)}"
        if self._gap_minutes() > 0:
            when += f" (plus the turnaround gap of {self._gap_minutes():g} min)"
        held = [n for n in candidates if n in busy][:5]
        return BookingError(
            409,
            f"only {free} of {want} nodes matching {describe_filter(f)} are free {when} "
            f"({len(candidates)} such node(s) in total"
            + (f"; taken: {self._busy_words(held)}" if held else "")
            + ")",
        )


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
    refusal = lifecycle.refusal(reservation.status, lifecycle.Trigger.EXTEND, reservation.id)
    if refusal:
        raise BookingError(409, refusal)
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


