"""The next free slot (POST /api/next-slot): a read of the calendar, no booking made."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter

from piseduce.agent import next_slot
from piseduce.agent.api.deps import AgentState, StateDep, booking_http, db, driver_errors
from piseduce.agent.api.nodes import refresh_inventory
from piseduce.agent.auth import Caller, CallerDep
from piseduce.agent.booking import BookingError
from piseduce.agent.holds import fmt
from piseduce.agent.schemas import NextSlotRequest
from piseduce.dbtypes import utcnow
from piseduce.protocol import NextSlotOut

router = APIRouter(prefix="/api", tags=["reservations"])


def _find(
    state: AgentState,
    caller: Caller,
    req: NextSlotRequest,
    after: dt.datetime,
    now: dt.datetime,
    remote: list[Any],
) -> NextSlotOut:
    duration = dt.timedelta(hours=req.duration_hours)
    with state.sessions() as s:
        found = next_slot.next_free(
            s,
            owner=caller.user,
            filters=req.filters,
            after=after,
            duration=duration,
            limits=state.limits,
            remote=remote,
            now=now,
        )
    if found is None:
        days = state.limits.max_advance.total_seconds() / 86400
        return NextSlotOut(
            detail=f"no start within the next {days:g} days (max_advance_days) fits this request"
        )
    start = next_slot.from_us(found.start)
    return NextSlotOut(
        start=start, end=start + duration, nodes=list(found.nodes), detail=f"free from {fmt(start)}"
    )


@router.post("/next-slot", response_model=NextSlotOut)
async def next_free_slot(req: NextSlotRequest, state: StateDep, caller: CallerDep) -> NextSlotOut:
    """The earliest start at or after `after` where every filter can be booked at once for
    `duration_hours` (turnaround gap and the per-user limit respected). 409/422 when no start ever
    fits (too many nodes, unknown or unavailable named nodes, a duration above the maximum)."""
    now = utcnow()
    after = req.after if isinstance(req.after, dt.datetime) else now
    await refresh_inventory(state, caller)
    remote: list[Any] = []
    if state.driver.inventory is not None:
        horizon = now + state.limits.max_advance + dt.timedelta(hours=req.duration_hours) + state.limits.gap
        async with driver_errors(state, "reading the remote calendar"):
            remote = list(await state.driver.remote_busy(max(after, now), horizon, caller.credentials))
    try:
        return await db(_find, state, caller, req, after, now, remote)
    except BookingError as exc:
        raise booking_http(exc) from None
