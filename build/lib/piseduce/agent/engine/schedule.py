"""The scheduling pass (in one short transaction of `Executor.tick`): start the deployments of
reservations whose slot began, destroy the reservations whose slot ended (or cancel those never
configured), and restart a destroy that no longer runs. Each candidate row is locked and checked
again, so concurrent executors (and the API) never act twice; what happens to each is the
lifecycle's (agent/lifecycle.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy import JSON, Integer, String, and_, bindparam, exists, func, insert, literal, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import BindParameter

from piseduce.agent import lifecycle
from piseduce.agent.actions import add_event, start_action
from piseduce.agent.drivers.base import Process, ReservationView
from piseduce.agent.engine.rows import ACTIONS, ActionRow, ReservationRow, write
from piseduce.agent.lifecycle import CONFIGURING, DEPLOYED, DEPLOYING, DESTROYING, FAILED, SCHEDULED, Trigger
from piseduce.agent.models import ACTION_CANCELLED, ACTION_OPEN, NODE_AVAILABLE, Action, Event, Reservation
from piseduce.agent.snapshots import reservation_view
from piseduce.db import among
from piseduce.protocol_events import EventKind

# Reservations past their end in one of these are destroyed (the node may hold the user's system);
# a `destroying` one is seen to when its destroy no longer runs.
DESTROY_ON_EXPIRY = tuple(
    s for s in lifecycle.allowed_in(Trigger.EXPIRE) if s not in (CONFIGURING, DESTROYING)
)
# The statuses of a reservation whose system is (or may be) on its node: the next one waits.
NODE_IN_USE = (DEPLOYING, DEPLOYED, FAILED, DESTROYING)
# A cancelled reservation whose testbed side the driver must still cancel, with its credentials.
Cancelled = tuple[ReservationView, str | None]


# The pass's three lookups, built once (each poll interval of each executor runs them: their
# construction cost more CPU than the indexed queries, migration 0010, on an idle agent).
_HAS_OPEN = exists().where(and_(Action.reservation_id == Reservation.id, Action.status.in_(ACTION_OPEN)))
_NOW: BindParameter[dt.datetime] = bindparam("now")
EXPIRED = select(Reservation.id).where(
    Reservation.end <= _NOW, Reservation.status.in_((CONFIGURING, *DESTROY_ON_EXPIRY))
)
STUCK = select(Reservation.id).where(Reservation.status == DESTROYING, ~_HAS_OPEN)
DUE = select(Reservation.id).where(
    Reservation.status == SCHEDULED, Reservation.start <= _NOW, Reservation.end > _NOW, ~_HAS_OPEN
)


def schedule(s: Session, now: dt.datetime, processes: Mapping[str, Process]) -> list[Cancelled]:
    """Start due deployments, end expired reservations; returns the cancelled ones."""
    at = {"now": now}
    expired = s.scalars(EXPIRED, at).all()
    stuck = s.scalars(STUCK).all()
    due = s.scalars(DUE, at).all()
    cancelled: list[Cancelled] = []
    # Everything the decisions need, in a few queries for all candidates (a thousand reservations
    # may start in one pass): the rows locked in id order, their open actions, their nodes' holders.
    rows = lock_for_schedule(s, set(expired) | set(stuck) | set(due))
    current_of = open_actions(s, list(rows))
    waiting = [r for r in rows.values() if r.status == SCHEDULED and r.id not in current_of]
    holders = node_holders(s, waiting)
    to_deploy: list[Reservation] = []
    # Nodes this pass starts a process on: a later candidate of the same node waits for it.
    taken: dict[str, Reservation] = {}
    for rid, r in rows.items():
        current = current_of.get(rid)
        if r.status == SCHEDULED and current is None and r.node_name in taken:
            holders.setdefault(r.id, taken[r.node_name])
        if r.end <= now and r.status == CONFIGURING:
            cancelled.append((reservation_view(r, sealed_params=True), r.credentials))
            cancel(s, r, current)
        elif r.status == SCHEDULED and current is None and (holder := holders.get(r.id)) is not None:
            # Nothing of this reservation ran yet: it starts (or is destroyed) once the node is free.
            wait_for_node(s, r, holder)
        elif (r.end <= now and r.status in DESTROY_ON_EXPIRY) or (r.status == DESTROYING and current is None):
            destroy(s, r, current, now, processes)
            taken[r.node_name] = r
        elif r.status == SCHEDULED and r.start <= now < r.end and current is None and deployable(s, r):
            to_deploy.append(r)
            taken[r.node_name] = r
    start_deployments(s, to_deploy)
    return cancelled


def start_deployments(s: Session, due: list[Reservation]) -> None:
    """Queue the deploy action of each of `due` and move it to its START status, in one INSERT (the
    new ids returned) and one UPDATE of many rows (a thousand slots may begin at once): the ORM's
    per-object flush of as many new actions and changed reservations cost seconds."""
    if not due:
        return
    ids = queue_deploys(s, [r.id for r in due])
    moved = []
    for r, action_id in zip(due, ids, strict=True):
        queued = ActionRow({"id": action_id, "process": "deploy"})
        add_event(s, r, "the reservation starts: deployment queued", action=queued)
        row = ReservationRow({"id": r.id, "status": r.status})
        lifecycle.move(row, Trigger.START)
        moved.append(row)
        # The session's copy agrees with the row written below, without a change of its own to flush.
        set_committed_value(r, "status", row.status)
    write(s, moved, ())


def queue_deploys(s: Session, rids: list[int]) -> list[int]:
    """New pending deploy actions of the reservations `rids` (none has an open action): their ids,
    in the order of `rids`. On PostgreSQL one INSERT ... SELECT of the ids as one array: a row of
    parameters per action (the columns' defaults included) made a statement of 14,000 parameters
    for a thousand, which psycopg parsed again each time (it caches short statements only)."""
    if s.get_bind().dialect.name != "postgresql":
        params = [{"reservation_id": rid, "process": "deploy", "args": {}} for rid in rids]
        return list(s.scalars(insert(ACTIONS).returning(ACTIONS.c.id, sort_by_parameter_order=True), params))
    each = func.unnest(bindparam("rids", rids, type_=ARRAY(Integer)))
    rows = select(each, literal("deploy", String), literal({}, JSON))
    # The other columns' defaults are evaluated once for the statement (include_defaults).
    query = insert(ACTIONS).from_select(["reservation_id", "process", "args"], rows)
    # Each reservation gets one action: its id maps the new rows back to `rids`.
    made = s.execute(query.returning(ACTIONS.c.reservation_id, ACTIONS.c.id)).tuples()
    new: dict[int, int] = dict(made.all())
    return [new[rid] for rid in rids]


def lock_for_schedule(s: Session, ids: set[int]) -> dict[int, Reservation]:
    """The candidates locked in id order (PostgreSQL; SQLite's write transaction is exclusive),
    fresh, their nodes loaded by a second query (FOR UPDATE cannot lock through an outer join)."""
    if not ids:
        return {}
    query = (
        select(Reservation)
        .where(among(s, Reservation.id, sorted(ids)))
        .order_by(Reservation.id)
        .options(selectinload(Reservation.node))
    )
    if s.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(of=Reservation)
    return {r.id: r for r in s.scalars(query.execution_options(populate_existing=True))}


def open_actions(s: Session, rids: list[int]) -> dict[int, Action]:
    """The open action of each reservation of `rids` that has one (the newest: `open_action`)."""
    if not rids:
        return {}
    out: dict[int, Action] = {}
    query = select(Action).where(among(s, Action.reservation_id, rids), Action.status.in_(ACTION_OPEN))
    for a in s.scalars(query.order_by(Action.id)):
        assert a.reservation_id is not None
        out[a.reservation_id] = a
    return out


def node_holders(s: Session, waiting: list[Reservation]) -> dict[int, Reservation]:
    """For each of `waiting`, another reservation of its node (the first by id) that still holds
    it: an action of its own open, or a status with the node in use. The calendar keeps slots
    apart, but a destroy may run past its slot's turnaround gap (a slow wipe, an executor
    restarted): the next deployment then waits for it, rather than power-cycling a board that is
    still being wiped."""
    if not waiting:
        return {}
    has_open = exists().where(and_(Action.reservation_id == Reservation.id, Action.status.in_(ACTION_OPEN)))
    held = s.scalars(
        select(Reservation)
        .where(
            among(s, Reservation.node_name, sorted({r.node_name for r in waiting})),
            or_(Reservation.status.in_(NODE_IN_USE), has_open),
        )
        .order_by(Reservation.id)
    ).all()
    by_node: dict[str, list[Reservation]] = {}
    for h in held:
        by_node.setdefault(h.node_name, []).append(h)
    out: dict[int, Reservation] = {}
    for r in waiting:
        holder = next((h for h in by_node.get(r.node_name, ()) if h.id != r.id), None)
        if holder is not None:
            out[r.id] = holder
    return out


def wait_for_node(s: Session, r: Reservation, holder: Reservation) -> None:
    """Say once (per holder) why the reservation has not started."""
    message = (
        f"the slot began, but {r.node_name} is still held by reservation {holder.id} ({holder.status}): "
        f"the deployment waits for {r.node_name} to be given back"
    )
    said = s.scalar(select(Event.id).where(Event.reservation_id == r.id, Event.message == message).limit(1))
    if said is None:
        add_event(s, r, message, level="warning")


def deployable(s: Session, r: Reservation) -> bool:
    """False (and the reservation fails, saying why) when its node cannot be deployed."""
    node = r.node
    if node.status != NODE_AVAILABLE:
        # A node under maintenance, or marked broken (by a failed destroy...), is not deployed.
        lifecycle.move(r, Trigger.UNAVAILABLE)
        r.error = (
            f"{node.name} is {node.status}: it cannot be deployed until an administrator makes it "
            "available again"
        )
        add_event(s, r, r.error, level="error")
        return False
    return True


def _stop(current: Action | None) -> None:
    if current is not None:
        current.status = ACTION_CANCELLED
        current.locked_by = None
        current.locked_until = None


def cancel(s: Session, r: Reservation, current: Action | None) -> None:
    _stop(current)
    lifecycle.move(r, Trigger.EXPIRE)
    add_event(s, r, "reservation cancelled: its slot ended before it was configured")


def destroy(
    s: Session, r: Reservation, current: Action | None, now: dt.datetime, processes: Mapping[str, Process]
) -> None:
    trigger = Trigger.EXPIRE if r.end <= now else Trigger.DESTROY
    if current is not None and current.process == "destroy":
        lifecycle.move(r, trigger)
        return
    if "destroy" not in processes:
        _stop(current)
        lifecycle.move(r, Trigger.RELEASE)
        add_event(
            s, r, "reservation ended (this node type has nothing to destroy)", kind=EventKind.SLOT_ENDED
        )
        return
    if r.end <= now:
        reason = f"the reservation ended at {r.end:%Y-%m-%d %H:%M} UTC: destroy queued"
    else:
        reason = "destroy restarted: no action was running"
    start_action(s, r, "destroy", supersede=True, reason=reason)
    lifecycle.move(r, trigger)
