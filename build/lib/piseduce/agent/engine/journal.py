"""The commit of actions' transitions: for each, the lease check, the step's state, the transition
itself and its event (DESIGN §5.3: every transition is committed before the next). `commit_many`
writes the transitions of many concurrent actions in one transaction (group commit, see
`group.py`): one lock query per table for the whole batch and one UPDATE per kind of change
(`rows.py`) instead of queries and a commit per transition; each action still waits for its own
transition to be durable before it goes on.

Locks come in the API's order (reservation, then action), each table's rows in id order, so
neither the API nor another executor's batch waits on a batch forever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from piseduce.agent import lease
from piseduce.agent.actions import CLOCK, bulk_events
from piseduce.agent.engine.rows import ActionRow, ReservationRow, load_actions, load_reservations, write
from piseduce.agent.models import ACTION_OPEN

# The columns of an action a commit reads (a transition sets others without reading them).
JOURNAL_COLUMNS = ("id", "status", "locked_by", "process", "step_started_at")

RESERVATION_COLUMNS = ("id", "node_name", "status", "end", "error")

# A transition: what it changes in the action row and its reservation (None: no reservation).
Mutation = Callable[[Session, ActionRow, ReservationRow | None], None]


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
    # The rows of the whole batch locked and loaded in two queries, written back in a few UPDATEs
    # of many rows each (rows.py), the events in one INSERT.
    # Their step state and connection only when a transition of the batch merges its own in.
    merging = any(e.state != e.saved_state or e.connection != e.saved_connection for e in entries)
    rcolumns = ReservationRow.COLUMNS if merging else RESERVATION_COLUMNS
    rids = (e.reservation_id for e in entries if e.reservation_id is not None)
    reservations = load_reservations(s, rids, columns=rcolumns)
    # Of the actions, what the lease check, the events and the result read (their args only for an
    # action without reservation, whose step state is kept there).
    columns = JOURNAL_COLUMNS + (("args",) if any(e.reservation_id is None for e in entries) else ())
    actions = load_actions(s, (e.action_id for e in entries), columns=columns)
    out: list[Committed | lease.LeaseLost] = []
    with bulk_events(s):
        for e in entries:
            a = actions.get(e.action_id)
            if a is None or a.status not in ACTION_OPEN or a.locked_by != e.owner:
                out.append(lease.LeaseLost(f"action {e.action_id} is no longer held by {e.owner}"))
                continue
            r = reservations.get(e.reservation_id) if e.reservation_id is not None else None
            out.append(_apply(s, e, a, r))
    write(s, reservations.values(), actions.values())
    return out


def _apply(s: Session, e: Entry, a: ActionRow, r: ReservationRow | None) -> Committed:
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
