"""The nodes users can book and the calendar of who holds them when."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from sqlalchemy import select

from piseduce.agent import holds
from piseduce.agent.api.deps import AgentState, StateDep, db, driver_errors
from piseduce.agent.auth import Caller, CallerDep
from piseduce.agent.calendar_cache import iso
from piseduce.agent.drivers.base import BusyInterval
from piseduce.agent.models import Node
from piseduce.dbtypes import to_utc
from piseduce.protocol import Node as NodeOut
from piseduce.protocol import Schedule

router = APIRouter(prefix="/api", tags=["nodes"])

MAX_WINDOW = dt.timedelta(days=31)
# Far enough for any calendar, near enough that date arithmetic never overflows.
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


async def refresh_inventory(state: AgentState, caller: Caller) -> None:
    if state.driver.inventory is not None:
        async with driver_errors(state, "listing the nodes"):
            await state.inventory.refresh(caller.credentials)


def _nodes(state: AgentState) -> list[NodeOut]:
    with state.sessions() as s:
        rows = s.execute(
            select(Node.name, Node.properties, Node.status).where(Node.present.is_(True)).order_by(Node.name)
        )
        return [NodeOut(name=r.name, properties=dict(r.properties or {}), status=r.status) for r in rows]


@router.get("/nodes", response_model=list[NodeOut])
async def nodes(state: StateDep, caller: CallerDep) -> list[NodeOut]:
    await refresh_inventory(state, caller)
    return await db(_nodes, state)


def utc(t: dt.datetime, name: str) -> dt.datetime:
    try:
        t = to_utc(t)
        if EARLIEST <= t <= LATEST:
            return t
    except ValueError:
        pass
    raise HTTPException(422, f"{name} must be between 2000 and 2200")


def _schedule(
    state: AgentState, caller: Caller, start: dt.datetime, end: dt.datetime, remote: list[BusyInterval]
) -> str:
    """The answer's JSON text, from the window's cached pieces: re-validating and re-encoding
    thousands of slots would cost more than the query (the response_model documents it)."""
    with state.sessions() as s:
        window = state.calendar.window(s, start, end, holds.hold_bound(s, state.limits))
    nodes_json = window.nodes_json(caller.user, caller.admin, remote)
    return f'{{"start":"{iso(start)}","end":"{iso(end)}","nodes":{nodes_json}}}'


@router.get("/schedule", response_model=Schedule)
async def schedule(
    state: StateDep,
    caller: CallerDep,
    start: Annotated[dt.datetime, Query(description="ISO-8601 (UTC when no zone is given)")],
    end: Annotated[dt.datetime, Query(description="ISO-8601; at most 31 days after start")],
) -> Any:
    start, end = utc(start, "start"), utc(end, "end")
    if end <= start:
        raise HTTPException(422, "end must be after start")
    if end - start > MAX_WINDOW:
        raise HTTPException(422, "the window is limited to 31 days")
    await refresh_inventory(state, caller)
    async with driver_errors(state, "reading the remote calendar"):
        remote = await state.driver.remote_busy(start, end, caller.credentials)
    return Response(
        await db(_schedule, state, caller, start, end, list(remote)), media_type="application/json"
    )
