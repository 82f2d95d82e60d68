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
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, select, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.types import String

from piseduce.agent.booking import BookingError, Limits, check_times, present_nodes
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.filters import lowered_match
from piseduce.agent.holds import hold_bound
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


_SHIFT = 21
_BLOCK = 1 << 20
_NODE = _BLOCK - 1
_OWN = _NODE  # the node index of the user's own reservations (the per-user limit)
MAX_NODES = _OWN  # candidate nodes one sweep can follow


class Sweep:
    """The sweep, resumable: holds are added window by window (each window's holds all begin
    after the starts already swept, so the events still ahead stay in order), and `run` goes on
    from where the last one stopped.

    A node's hold `[a, b)` blocks starts from a - L + 1 µs and unblocks them from b. An event is
    one integer, `time << 21 | block bit << 20 | node index` (sorting integers is several times
    faster than sorting tuples); node index _OWN is one of the user's own reservations."""

    def __init__(self, wants: Sequence[Want], *, after: int, length: int, duration: int, room: int) -> None:
        # Named filters first, then property filters in order: the order `pick_nodes` serves them.
        self.order = [w for w in wants if w.named] + [w for w in wants if not w.named]
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.member: list[list[int]] = []
        for i, w in enumerate(self.order):
            for n in w.nodes:
                k = self.index.get(n)
                if k is None:
                    k = self.index[n] = len(self.names)
                    self.names.append(n)
                    self.member.append([])
                self.member[k].append(i)
        if len(self.names) > MAX_NODES:
            raise BookingError(422, f"at most {MAX_NODES} candidate nodes per request")
        self.want_idx = [[self.index[n] for n in w.nodes] for w in self.order]
        self.free = [len(w.nodes) for w in self.order]
        self.need = [w.count for w in self.order]
        self.blocked = [0] * len(self.names)
        self.held = 0
        self.after, self.length, self.duration, self.room = after, length, duration, room
        self.events: list[int] = []
        self.ends: list[int] = [after]

    def add(self, holds: Iterable[tuple[str, int, int]], own: Iterable[tuple[int, int]] = ()) -> None:
        """`holds`: (node, a, b) during which a node is held; `own`: the user's reservations
        (start, end), of which at most `room` may overlap a new `[t, t + duration)`."""
        after, length, index = self.after, self.length, self.index
        events, ends = self.events, self.ends
        for node, a, b in holds:
            k = index.get(node)
            if k is None or b <= after:
                continue
            events.append(((a - length + 1) << _SHIFT) | _BLOCK | k)
            events.append((b << _SHIFT) | k)
            ends.append(b)
        for st, e in own:
            if e <= after:
                continue
            events.append(((st - self.duration + 1) << _SHIFT) | _BLOCK | _OWN)
            events.append((e << _SHIFT) | _OWN)
            ends.append(e)

    def run(self, until: int) -> Answer | None:
        """The earliest start in [after, until] where every want is met, or None (then the
        events and starts after `until` are kept for the next run)."""
        events = sorted(self.events)
        ends = sorted(set(self.ends))
        blocked, member, free, need = self.blocked, self.member, self.free, self.need
        single = len(need) == 1
        k, n_events = 0, len(events)
        found: Answer | None = None
        j = 0
        for j, t in enumerate(ends):  # noqa: B007 (j is where the next run resumes)
            if t > until:
                break
            bound = (t + 1) << _SHIFT  # every event of time <= t
            while k < n_events and events[k] < bound:
                event = events[k]
                k += 1
                node = event & _NODE
                delta = 1 if event & _BLOCK else -1
                if node == _OWN:
                    self.held += delta
                    continue
                before = blocked[node]
                blocked[node] = before + delta
                if before == 0 or before + delta == 0:
                    for i in member[node]:
                        free[i] -= delta
            if t < self.after or self.held > self.room:
                continue
            if single:
                if free[0] < need[0]:
                    continue
            elif any(f < c for f, c in zip(free, need, strict=True)):
                continue
            picked = self._greedy()
            if picked is not None:
                found = Answer(t, picked)
                break
        else:
            j = len(ends)
        self.events = events[k:]
        self.ends = ends[j:]
        return found

    def _greedy(self) -> tuple[str, ...] | None:
        """The nodes `pick_nodes` would choose with these nodes held, or None when it refuses.
        The free counts are only necessary: filters sharing nodes may still not fit together."""
        chosen: list[int] = []
        taken: set[int] = set()
        blocked = self.blocked
        for w, idx in zip(self.order, self.want_idx, strict=True):
            if w.named:
                if any(blocked[k] for k in idx):
                    return None
                chosen.extend(idx)
                taken.update(idx)
                continue
            picked = []
            for k in idx:
                if not blocked[k] and k not in taken:
                    picked.append(k)
                    if len(picked) == w.count:
                        break
            if len(picked) < w.count:
                return None
            chosen.extend(picked)
            taken.update(picked)
        return tuple(self.names[k] for k in chosen)


# ---------------------------------------------------------------- reading the calendar


def _us_column(column: Any, dialect: str) -> ColumnElement[int]:
    """A UTC time column as integer microseconds, computed by the database."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): seconds by strftime, microseconds as text.
        text = type_coerce(column, String)
        seconds = (
            func.unixepoch(text)
            if sqlite3.sqlite_version_info >= (3, 38)
            else cast(func.strftime("%s", text), Integer)
        )
        return seconds * US + cast(func.substr(text, 21, 6), Integer)
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


FEW_NODES = 64  # candidates read by their (node, start) index rather than the calendar's


def _holds(
    session: Session, lo: int, hi: int, bound: int | None, nodes: Sequence[str] = ()
) -> list[tuple[str, int, int]]:
    """Active holds (node, a, b) beginning in [lo, hi) (bound None), or, for the first window,
    beginning before hi and ending after lo (`bound`: no hold is longer), by a range scan of the
    start index; of `nodes` only when given (a few named nodes: their own index, not every
    node's holds)."""
    dialect = session.get_bind().dialect.name
    q = select(
        Reservation.node_name,
        _us_column(Reservation.start, dialect),
        _us_column(Reservation.busy_until, dialect),
    ).where((Reservation.status + "").in_(ACTIVE_STATUSES), Reservation.start < from_us(hi))
    if nodes:
        q = q.where(Reservation.node_name.in_(nodes))
    if bound is None:
        q = q.where(Reservation.start >= from_us(lo))
    else:
        q = q.where(Reservation.busy_until > from_us(lo), Reservation.start >= from_us(lo - bound))
    result = session.connection().execute(q)
    rows: list[tuple[str, int, int]] = list(result.cursor.fetchall()) if result.cursor is not None else []
    result.close()
    return rows


def _own(session: Session, owner: str, lo: int) -> list[tuple[int, int]]:
    """The owner's active reservations (start, end) ending after lo (the per-user limit)."""
    rows = session.execute(
        select(Reservation.start, Reservation.end).where(
            Reservation.owner == owner,
            Reservation.status.in_(ACTIVE_STATUSES),
            Reservation.end > from_us(lo),
        )
    )
    return [(to_us(a), to_us(b)) for a, b in rows]


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
    start = to_us(max(after, now))
    latest = to_us(now + limits.max_advance)
    length = to_us(EPOCH + duration + limits.gap)
    sweep = Sweep(
        wants,
        after=start,
        length=length,
        duration=to_us(EPOCH + duration),
        room=limits.max_nodes_per_user - count,
    )
    sweep.add([(b.node, to_us(b.start), to_us(b.end)) for b in remote], _own(session, owner, start))
    bound: int | None = to_us(EPOCH + hold_bound(session, limits))
    few = sweep.names if len(sweep.names) <= FEW_NODES else []
    lo, window = start, max(4 * length, 86400 * US)
    while True:
        hi = min(start + window, latest + length)
        sweep.add(_holds(session, lo, hi, bound, few))
        # Starts are proven only up to hi - length: holds beginning at hi or later are unread.
        proven = latest if hi >= latest + length else hi - length
        found = sweep.run(proven)
        if found is not None or proven >= latest:
            return found
        lo, bound, window = hi, None, window * 4
