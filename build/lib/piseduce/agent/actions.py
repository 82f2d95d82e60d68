"""Starting actions and recording events: the one place where the API and the engine create
`Action` and `Event` rows, so both follow the same rules.

Rules: a reservation has at most one open (pending or running) action; a `destroy` supersedes the
open one (it is cancelled, with an event); any other request while an action is open is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from piseduce.agent.drivers.base import ActionRefused
from piseduce.agent.event_kinds import DEPLOYS
from piseduce.agent.models import ACTION_CANCELLED, ACTION_OPEN, Action, Event, Reservation
from piseduce.dbtypes import utcnow
from piseduce.protocol_events import EventKind

log = logging.getLogger(__name__)

# `session.info[CLOCK]`: the time of the transaction's events, when it is not now (the executor's
# clock, so that events and step clocks agree; agent/engine/journal.py sets it).
CLOCK = "piseduce.clock"
# `session.info[EVENT_ROWS]`: the events of a transaction that writes many (`bulk_events`).
EVENT_ROWS = "piseduce.event_rows"


@contextmanager
def bulk_events(session: Session) -> Iterator[None]:
    """The events added meanwhile are written with one INSERT of many rows when the body ends
    (not as ORM objects, one each in the flush): the engine's group commits write thousands a
    second. Nothing is written when the body raises."""
    rows: list[dict[str, Any]] = []
    outer = session.info.get(EVENT_ROWS)
    session.info[EVENT_ROWS] = rows
    try:
        yield
        if rows:
            _insert_events(session, rows)
            # The batch's one line at INFO (its events are at DEBUG, see add_event).
            if log.isEnabledFor(logging.INFO):
                nodes = len({r["node_name"] for r in rows})
                log.info("%d events written in one statement (%d nodes)", len(rows), nodes)
    finally:
        if outer is None:
            session.info.pop(EVENT_ROWS, None)
        else:
            session.info[EVENT_ROWS] = outer


# The columns of an event row (add_event), in the order COPY sends them.
EVENT_COLUMNS = (
    "reservation_id", "action_id", "node_name", "time", "level", "step", "message", "kind", "actor"
)


def _insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Many events at once: COPY on PostgreSQL, where an INSERT of many rows costs five times its
    CPU (psycopg adapts each row's parameters and queues a statement for it); one INSERT of many
    rows elsewhere. Both in the session's transaction."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(cast(Table, Event.__table__)), rows)
        return
    session.flush()  # what the ORM has pending goes first, as with the INSERT
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            # The UTCDateTime column's own rule: an aware time, stored as UTC.
            if row["time"].tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            copy.write_row([row[c] for c in EVENT_COLUMNS])


class EventReservation(Protocol):
    """What an event reads of its reservation: an ORM row, or the engine's plain one (engine/rows.py)."""

    @property
    def id(self) -> int: ...
    @property
    def node_name(self) -> str: ...


class EventAction(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def process(self) -> str: ...


def session_now(session: Session) -> dt.datetime:
    """The time of this transaction's changes: the executor's clock when it set one, else now."""
    now: dt.datetime = session.info.get(CLOCK, utcnow)()
    return now


def event_kind(
    reservation: EventReservation | None, level: str, action: EventAction | None, actor: str
) -> EventKind:
    """The kind of an event written without one, from its structured fields only: an error of a
    deployment (or of a reservation outside any action: refused at its start) is a failed
    deployment, somebody other than the owner acting is an administrator's action (only they may)."""
    if reservation is None:
        return EventKind.OTHER
    if level == "error" and (action is None or action.process in DEPLOYS):
        return EventKind.DEPLOY_FAILED
    # Callers naming an actor hold the ORM row; the engine's plain rows (engine/rows.py) name none.
    owner = reservation.owner if isinstance(reservation, Reservation) else None
    if actor and owner is not None and actor != owner:
        return EventKind.ADMIN_ACTION
    return EventKind.OTHER


def add_event(
    session: Session,
    reservation: EventReservation | None,
    message: str,
    *,
    step: str = "",
    level: str = "info",
    action: EventAction | None = None,
    node: str = "",
    kind: EventKind | None = None,
    actor: str = "",
) -> None:
    """Record an event; `node` names the node of an event with no reservation (an admin changed
    its status...), so that the event feed (api/events.py) can say whose node it was. `kind` is
    what it means for the user it concerns, `actor` who acted on the reservation (the caller
    naming them); without a kind it follows from the structured fields (event_kind)."""
    row = {
        "reservation_id": reservation.id if reservation is not None else None,
        "action_id": action.id if action is not None else None,
        "node_name": reservation.node_name if reservation is not None else node,
        "time": session_now(session),
        "level": level,
        "step": step,
        "message": message[:4000],
        "kind": str(kind or event_kind(reservation, level, action, actor)),
        "actor": actor[:128],
    }
    rows = session.info.get(EVENT_ROWS)
    if rows is not None:
        rows.append(row)
    else:
        session.add(Event(**row))
    # An event written with many others (`bulk_events`: the engine's group commits, a thousand
    # a second) is logged at DEBUG, its batch in one INFO line: a line per event cost the executor
    # more CPU than its database. Warnings and errors keep a line each.
    if level in ("warning", "error"):
        lvl = logging.WARNING
    else:
        lvl = logging.DEBUG if rows is not None else logging.INFO
    if not log.isEnabledFor(lvl):
        return
    log.log(
        lvl,
        message,
        extra={
            "node": row["node_name"] or None,
            "reservation": row["reservation_id"],
            "step": step or None,
            "action": action.process if action is not None else None,
        },
    )


def open_action(session: Session, reservation_id: int) -> Action | None:
    return session.scalars(
        select(Action)
        .where(Action.reservation_id == reservation_id, Action.status.in_(ACTION_OPEN))
        .order_by(Action.id.desc())
    ).first()


def start_action(
    session: Session,
    reservation: Reservation,
    process: str,
    args: dict[str, Any] | None = None,
    *,
    supersede: bool = False,
    reason: str = "",
    actor: str = "",
) -> Action:
    """Queue `process` on `reservation` (the executor picks it up). Not committed here."""
    current = open_action(session, reservation.id)
    if current is not None:
        if not supersede:
            raise ActionRefused(
                f"{reservation.node_name} is busy with '{current.process}' "
                f"(step {current.step_name or 'starting'}); "
                "wait for it to finish"
            )
        current.status = ACTION_CANCELLED
        current.locked_by = None
        current.locked_until = None
        add_event(
            session, reservation, f"{current.process} cancelled by {process}", level="warning", action=current
        )
    return queue_actions(session, [reservation], process, args, reason=reason, actor=actor)[0]


def queue_actions(
    session: Session,
    reservations: list[Reservation],
    process: str,
    args: dict[str, Any] | None = None,
    *,
    reason: str = "",
    actor: str = "",
) -> list[Action]:
    """Queue `process` on reservations that have no open action (the caller checked), with one
    flush for all of them (the scheduling pass starts many deployments at once). Not committed."""
    actions = [Action(reservation_id=r.id, process=process, args=dict(args or {})) for r in reservations]
    session.add_all(actions)
    session.flush()
    for reservation, action in zip(reservations, actions, strict=True):
        add_event(session, reservation, reason or f"{process} requested", action=action, actor=actor)
    return actions
