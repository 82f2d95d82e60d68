"""The commit of actions' transitions: for each, the lease check, the step's state, the transition
itself and its event (DESIGN §5.3: every transition is committed before the next). `commit_many`
writes the transitions of many concurrent actions in one transaction (group commit, see
`group.py`): one lock query per table for the whole batch instead of two queries and a commit per
transition; each action still waits for its own transition to be durable before it goes on.

Locks come in the API's order (reservation, then action), each table's rows in id order, so
neither the API nor another executor's batch waits on a batch forever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload

from piseduce.agent import lease
from piseduce.agent.actions import CLOCK, bulk_events
from piseduce.agent.models import ACTION_OPEN, Action, Reservation

# A transition: what it changes in the action row and its reservation (None: no reservation).
Mutation = Callable[[Session, Action, Reservation | None], None]


def fmt_seconds(seconds: float) -> str:
    # 600 -> "600", 2.5 -> "2.5", 0.04 -> "0.04" (scaled timeouts of the simulators are short).
    if seconds >= 10:
        return f"{seconds:.0f}"
    return f"{seconds:.2g}"


def merge(db: dict[str, Any], saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Apply to `db` the keys the step changed since the last save, keeping the keys someone else
    (the API extending a reservation...) changed meanwhile."""
    out = dict(db)
    missing = object()
    for key, value in current.items():
        if saved.get(key, missing) != value:
            out[key] = value
    for key in saved:
        if key not in current:
            out.pop(key, None)
    return out


def lock_reservation(s: Session, rid: int) -> Reservation | None:
    """Lock a reservation row (PostgreSQL; SQLite's write transaction is already exclusive) and
    load it fresh, in one query."""
    return lock_reservations(s, [rid]).get(rid)


def lock_reservations(s: Session, rids: Iterable[int]) -> dict[int, Reservation]:
    """Lock reservation rows (in id order) and load them fresh, in one query: their nodes are loaded
    only when a transition touches them (most commits do not), which also lets FOR UPDATE lock the
    reservations without an outer join."""
    ids = sorted(set(rids))
    if not ids:
        return {}
    query = select(Reservation).where(Reservation.id.in_(ids)).order_by(Reservation.id)
    query = query.options(lazyload(Reservation.node))
    if s.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(of=Reservation)
    return {r.id: r for r in s.scalars(query.execution_options(populate_existing=True))}


def lock_actions(s: Session, ids: Iterable[int]) -> dict[int, Action]:
    """Lock action rows (in id order) and load them fresh, in one query."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = select(Action).where(Action.id.in_(wanted)).order_by(Action.id)
    if s.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    return {a.id: a for a in s.scalars(query.execution_options(populate_existing=True))}


@dataclass(frozen=True)
class Entry:
    """What one commit writes for an action: its step state and connection as the step left them
    (and as last saved), a progress percentage to store (None: unchanged), the transition."""

    action_id: int
    reservation_id: int | None
    owner: str
    lease_seconds: float
    now: Callable[[], dt.datetime]
    state: dict[str, Any]
    saved_state: dict[str, Any]
    connection: dict[str, Any]
    saved_connection: dict[str, Any]
    progress: int | None
    mutate: Mutation | None


# What a commit returns to its action: the reservation's end (an extension made meanwhile) and
# the step's clock.
Committed = tuple[dt.datetime | None, dt.datetime]


def commit(s: Session, e: Entry) -> Committed:
    """Write `e` in the caller's transaction; LeaseLost when `e.owner` no longer holds the action."""
    result = commit_many(s, [e])[0]
    if isinstance(result, lease.LeaseLost):
        raise result
    return result


def commit_many(s: Session, entries: Sequence[Entry]) -> list[Committed | lease.LeaseLost]:
    """Write `entries` (of distinct actions) in the caller's transaction. An entry whose action
    its owner no longer holds gets LeaseLost and changes nothing; the others are written. An
    exception raised by a transition propagates (the caller rolls the whole batch back)."""
    if not entries:
        return []
    s.info[CLOCK] = entries[0].now
    reservations = lock_reservations(s, (e.reservation_id for e in entries if e.reservation_id is not None))
    actions = lock_actions(s, (e.action_id for e in entries))
    out: list[Committed | lease.LeaseLost] = []
    with bulk_events(s):
        for e in entries:
            a = actions.get(e.action_id)
            if a is None or a.status not in ACTION_OPEN or a.locked_by != e.owner:
                out.append(lease.LeaseLost(f"action {e.action_id} is no longer held by {e.owner}"))
                continue
            r = reservations.get(e.reservation_id) if e.reservation_id is not None else None
            out.append(_apply(s, e, a, r))
    return out


def _apply(s: Session, e: Entry, a: Action, r: Reservation | None) -> Committed:
    a.locked_until = e.now() + dt.timedelta(seconds=e.lease_seconds)
    if e.progress is not None:
        a.progress = e.progress
    if r is not None:
        if e.state != e.saved_state:
            r.driver_state = merge(r.driver_state or {}, e.saved_state, e.state)
        if e.connection != e.saved_connection:
            r.connection = merge(r.connection or {}, e.saved_connection, e.connection)
    elif e.state != e.saved_state or e.connection != e.saved_connection:
        a.args = {**(a.args or {}), "driver_state": e.state, "connection": e.connection}
    if e.mutate is not None:
        e.mutate(s, a, r)
    # Step clocks are stamped inside the transaction, so waiting for the database never counts
    # against a step's timeouts.
    return (r.end if r is not None else None), a.step_started_at
