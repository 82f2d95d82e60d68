"""The event feed (`GET /api/admin/events?after=&limit=`): the agent's event log in id order, each
event classified (agent/event_kinds.py) and with the users it concerns, for the web UI's
notifications, which read it with a cursor of their own (webui/notify/cursor.py). Admins only:
it names every user's reservations."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from piseduce.agent.api.deps import AgentState, StateDep, db
from piseduce.agent.api.views import connection
from piseduce.agent.auth import admin
from piseduce.agent.event_kinds import Kind, classify
from piseduce.agent.lifecycle import ACTIVE_STATUSES
from piseduce.agent.models import Action, Event, Reservation
from piseduce.numbers import StrictInt
from piseduce.protocol_events import EventFeed, EventKind, FeedEvent

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin)])

MAX_LIMIT = 1000
KINDS = {k.value for k in EventKind}


def _holders(s: Session, node: str, when: dt.datetime) -> list[str]:
    """Who held `node` when it went broken: the owners of its reservations active then."""
    rows = s.scalars(
        select(Reservation.owner).where(
            Reservation.node_name == node,
            Reservation.status.in_(ACTIVE_STATUSES),
            Reservation.start <= when,
            Reservation.end > when,
        )
    )
    return sorted(set(rows))


def _feed(state: AgentState, after: int, limit: int) -> EventFeed:
    with state.sessions() as s:
        last_id = s.scalar(select(func.max(Event.id))) or 0
        rows = s.execute(
            select(Event, Action.process)
            .outerjoin(Action, Action.id == Event.action_id)
            .where(Event.id > after)
            .order_by(Event.id)
            .limit(limit)
        ).all()
        ids = {e.reservation_id for e, _ in rows if e.reservation_id is not None}
        reservations = (
            {r.id: r for r in s.scalars(select(Reservation).where(Reservation.id.in_(ids)))} if ids else {}
        )
        out: list[FeedEvent] = []
        for e, process in rows:
            r = reservations.get(e.reservation_id) if e.reservation_id is not None else None
            if e.kind is None:  # written before migration 0008: read from its sentence
                kind = classify(e.message, e.level, process or "", r.owner if r is not None else None)
            else:
                told = EventKind(e.kind) if e.kind in KINDS else EventKind.OTHER
                kind = Kind(told, e.actor if told == EventKind.ADMIN_ACTION else "")
            item = FeedEvent(
                id=e.id,
                time=e.time,
                kind=kind.kind,
                level=e.level,
                step=e.step,
                message=e.message,
                node=e.node_name,
                reservation_id=e.reservation_id,
                action_id=e.action_id,
                process=process or "",
                actor=kind.actor,
            )
            if r is not None:
                item.users = [r.owner]
                item.bin, item.status, item.end = r.bin, r.status, r.end
                if kind.kind == EventKind.DEPLOY_DONE:
                    item.connection = connection(r, state)
            elif kind.kind == EventKind.NODE_BROKEN and e.node_name:
                item.users = _holders(s, e.node_name, e.time)
            out.append(item)
        return EventFeed(events=out, last_id=last_id)


@router.get("/events", response_model=EventFeed)
async def events(
    state: StateDep,
    after: Annotated[StrictInt, Query(ge=0, le=2**62, description="Events with a greater id")] = 0,
    limit: Annotated[StrictInt, Query(ge=1, le=MAX_LIMIT)] = 500,
) -> EventFeed:
    """The event log after `after`, oldest first, at most `limit` events."""
    return await db(_feed, state, after, limit)
