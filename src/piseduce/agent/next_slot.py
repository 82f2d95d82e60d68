"""The next free slot (issue 17): the earliest start at or after a given time where a request
(filters, duration) could be booked all at once, turnaround gap and per-user limit respected.

A sweep over the busy intervals of the candidate nodes, not a probe of every start: a node is free
to start at `t` for a hold of length `L` (duration + gap) unless one of its holds `[a, b)` has
`a - L < t < b`. Starting from `after`, every block and unblock is an event in time order; the only
starts worth checking are `after` and the moments something ends (a hold, or one of the user's own
reservations for the per-user limit). Free counts per filter are kept as events go by; where the
filters' candidates overlap, the booking's own greedy choice (`booking.pick_nodes`: named nodes first,
then property filters in order, by name) is replayed, so the answer is a start `book()` accepts.

Times are integer microseconds since the epoch, read so by the database (no datetime per row). The
database is read in growing windows: a start `t` is proven free once every hold beginning before
`t + L` is known, so a near answer reads only the near holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.types import String

from piseduce.agent.booking import BookingError, Limits, check_times, present_nodes
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.filters import lowered_match
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import NODE_AVAILABLE, Reservation
from piseduce.agent.schemas import Filter

US = 1_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_us(t: dt.datetime) -> int:
    d = t - EPOCH
    return (d.days * 86400 + d.seconds) * US + d.microseconds


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


@dataclass(frozen=True)
class Want:
    """One filter resolved to its candidate nodes (name order, as `pick_nodes` takes them)."""

    nodes: tuple[str, ...]
    count: int
    named: bool


@dataclass(frozen=True)
class Answer:
    start: int  # microseconds since the epoch
    nodes: tuple[str, ...]  # what the booking would take at that start


def _greedy(wants: Sequence[Want], blocked: Mapping[str, int]) -> tuple[str, ...] | None:
    """The nodes `pick_nodes` would choose with these nodes held, or None when it would refuse."""
    chosen: list[str] = []
    taken: set[str] = set()
    for w in wants:  # named first (the caller's order)
        if w.named:
            if any(blocked.get(n, 0) for n in w.nodes):
                return None
            chosen.extend(w.nodes)
            taken.update(w.nodes)
    for w in wants:
        if w.named:
            continue
        picked = []
        for n in w.nodes:
            if not blocked.get(n, 0) and n not in taken:
                picked.append(n)
                if len(picked) == w.count:
                    break
        if len(picked) < w.count:
            return None
        chosen.extend(picked)
        taken.update(picked)
    return tuple(chosen)


def earliest(
    wants: Sequence[Want],
    holds: Iterable[tuple[str, int, int]],
    own: Iterable[tuple[int, int]],
    *,
    after: int,
    until: int,
    length: int,
    duration: int,
    room: int,
) -> Answer | None:
    """The earliest start in [after, until] where every want is met, or None.

    `holds`: (node, a, b) intervals during which a node is held; `length`: how long a booking holds
    its nodes (duration + gap); `own`: the user's reservations (start, end), of which at most
    `room` may overlap the new `[t, t + duration)`."""
    order = [w for w in wants if w.named] + [w for w in wants if not w.named]
    member: dict[str, list[int]] = {}
    for i, w in enumerate(order):
        for n in w.nodes:
            member.setdefault(n, []).append(i)
    free = [len(w.nodes) for w in order]
    need = [w.count for w in order]

    # Events (time, delta, node): a block counts from a - L + 1 (µs), an unblock from b. A node
    # index of -1 is one of the user's own reservations (limit counter).
    events: list[tuple[int, int, str]] = []
    ends: set[int] = {after}
    for node, a, b in holds:
        if b <= after or node not in member or a - length >= until:
            continue
        events.append((a - length + 1, 1, node))
        events.append((b, -1, node))
        if b <= until:
            ends.add(b)
    for s, e in own:
        if e <= after or s - duration >= until:
            continue
        events.append((s - duration + 1, 1, ""))
        events.append((e, -1, ""))
        if e <= until:
            ends.add(e)
    events.sort()
    blocked: dict[str, int] = {}
    held = 0
    k = 0
    n_events = len(events)
    for t in sorted(ends):
        if t < after:
            continue
        while k < n_events and events[k][0] <= t:
            _, delta, node = events[k]
            k += 1
            if not node:
                held += delta
                continue
            before = blocked.get(node, 0)
            blocked[node] = before + delta
            if before == 0 or before + delta == 0:
                for i in member[node]:
                    free[i] -= delta
        if held > room:
            continue
        if any(f < c for f, c in zip(free, need, strict=True)):
            continue
        picked = _greedy(order, blocked)
        if picked is not None:
            return Answer(t, picked)
    return None


# ---------------------------------------------------------------- reading the calendar


def _us_column(column: Any, dialect: str) -> ColumnElement[int]:
    """A UTC time column as integer microseconds, computed by the database."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): seconds by strftime, microseconds as text.
        text = type_coerce(column, String)
        return cast(func.strftime("%s", text), Integer) * US + cast(func.substr(text, 21, 6), Integer)
    return cast(func.extract("epoch", column) * US, BigInteger)


def resolve(session: Session, filters: Sequence[Filter]) -> list[Want]:
    """Each filter's candidate nodes, as `pick_nodes` finds them; 409/422 for what no time cures."""
    rows = present_nodes(session)
    by_name = {r.name: r for r in rows}
    named = [n for f in filters if f.nodes is not None for n in f.nodes]
    if len(set(named)) != len(named):
        raise BookingError(422, "a node is named in two filters")
    unknown = [n for n in named if n not in by_name]
    if unknown:
        raise BookingError(422, f"unknown node(s): {', '.join(sorted(unknown)[:10])}")
    wants = []
    for f in filters:
        if f.nodes is not None:
            down = [n for n in f.nodes if by_name[n].status != NODE_AVAILABLE]
            if down:
                raise BookingError(
                    409, f"node {down[0]} is {by_name[down[0]].status}, not available for booking"
                )
            wants.append(Want(tuple(f.nodes), len(f.nodes), True))
            continue
        wanted = {k.lower(): v for k, v in f.properties.items()}
        cands = tuple(r.name for r in rows if r.status == NODE_AVAILABLE and lowered_match(r.lowered, wanted))
        if len(cands) < (f.count or 0):
            raise BookingError(
                409, f"only {len(cands)} available node(s) match this filter: it can never be booked at once"
            )
        wants.append(Want(cands, f.count or 0, False))
    # Several property filters may ask the same nodes: together they may still never fit.
    total = sum(w.count for w in wants)
    every = {n for w in wants for n in w.nodes}
    if total > len(every):
        raise BookingError(409, f"{total} nodes asked, only {len(every)} available nodes match the filters")
    return wants


def _holds(
    session: Session, names: set[str], owner: str, lo: int, hi: int
) -> tuple[list[tuple[str, int, int]], list[tuple[int, int]]]:
    """Active holds with b > lo and a < hi: (node, a, b) of the candidate nodes, and the owner's
    (start, end) of any node."""
    dialect = session.get_bind().dialect.name
    a = _us_column(Reservation.start, dialect)
    b = _us_column(Reservation.busy_until, dialect)
    e = _us_column(Reservation.end, dialect)
    q = select(Reservation.node_name, a, b, e, Reservation.owner).where(
        (Reservation.status + "").in_(ACTIVE_STATUSES),
        Reservation.busy_until > from_us(lo),
        Reservation.start < from_us(hi),
    )
    result = session.connection().execute(q)
    rows = result.cursor.fetchall() if result.cursor is not None else []
    result.close()
    node_holds = [(n, int(x), int(y)) for n, x, y, _, o in rows if n in names]
    own = [(int(x), int(z)) for _, x, _, z, o in rows if o == owner]
    return node_holds, own


def next_free(
    session: Session,
    *,
    owner: str,
    filters: Sequence[Filter],
    after: dt.datetime,
    duration: dt.timedelta,
    limits: Limits,
    remote: Iterable[BusyInterval] = (),
    now: dt.datetime,
) -> Answer | None:
    """The earliest start ≥ `after` (and within the agent's max advance) where `book()` would
    accept this request, or None. Raises BookingError for a request no start can satisfy."""
    check_times(max(after, now), duration, limits, now)
    wants = resolve(session, filters)
    count = sum(w.count for w in wants)
    if count > limits.max_nodes_per_user:
        raise BookingError(
            409, f"{count} nodes asked; this agent allows {limits.max_nodes_per_user} per user at once"
        )
    names = {n for w in wants for n in w.nodes}
    start = to_us(max(after, now))
    latest = to_us(now + limits.max_advance)
    length = to_us(EPOCH + duration + limits.gap)
    dur = to_us(EPOCH + duration)
    remote_holds = [(b.node, to_us(b.start), to_us(b.end)) for b in remote if b.node in names]
    window = max(4 * length, 86400 * US)
    while True:
        hi = min(start + window, latest + length)
        node_holds, own = _holds(session, names, owner, start, hi)
        # Starts are proven only up to hi - length: holds beginning at hi or later are unread.
        proven = latest if hi >= latest + length else hi - length
        found = earliest(
            wants,
            node_holds + [h for h in remote_holds if h[1] < hi],
            own,
            after=start,
            until=proven,
            length=length,
            duration=dur,
            room=limits.max_nodes_per_user - count,
        )
        if found is not None or proven >= latest:
            return found
        window *= 4
