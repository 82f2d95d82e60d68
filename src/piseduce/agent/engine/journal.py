"""One commit of an action's transition: the lease check, the step's state, the transition itself
and its event, in one transaction (DESIGN §5.3: every transition is committed before the next).

Locks come in the API's order (reservation, then action), so neither waits on the other forever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload

from piseduce.agent import lease
from piseduce.agent.actions import CLOCK
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
    load it fresh, in one query: its node is loaded only when a transition touches it (most
    commits do not), which also lets FOR UPDATE lock the reservation without an outer join."""
    query = select(Reservation).where(Reservation.id == rid).options(lazyload(Reservation.node))
    if s.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(of=Reservation)
    return s.scalars(query.execution_options(populate_existing=True)).one_or_none()


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


def commit(s: Session, e: Entry) -> tuple[dt.datetime | None, dt.datetime]:
    """Write `e` in the caller's transaction; LeaseLost when `e.owner` no longer holds the action.
    Returns the reservation's end (an extension made meanwhile) and the step's clock."""
    s.info[CLOCK] = e.now
    r = lock_reservation(s, e.reservation_id) if e.reservation_id is not None else None
    a = s.get(Action, e.action_id, with_for_update=True, populate_existing=True)
    if a is None or a.status not in ACTION_OPEN or a.locked_by != e.owner:
        raise lease.LeaseLost(f"action {e.action_id} is no longer held by {e.owner}")
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
