"""/api/v1/next-slot: when a booking could start, all at once, across agents (nothing booked)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from piseduce.api_models import NextSlotOut, NodeRefOut
from piseduce.webui import next_slot, next_slot_limit
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.api.auth import Caller, caller, identity_of
from piseduce.webui.api.routes_reservations import booking_request, partial
from piseduce.webui.api.schemas import BookingIn, NextSlotIn

router = APIRouter(tags=["reservations"])


@router.post(
    "/next-slot",
    response_model=NextSlotOut,
    responses={
        409: {"description": "No start fits within the agents' booking horizon"},
        429: {"description": "Too many questions from this user: wait Retry-After seconds"},
    },
)
async def find_next_slot(
    body: NextSlotIn,
    request: Request,
    response: Response,
    who: Caller = Depends(caller),
    h: AgentClient = Depends(agents),
) -> NextSlotOut:
    """The earliest start at or after `after` where named `nodes`, or `count` nodes matching
    `filters`, could be booked all at once for `hours` (turnaround gaps and per-user limits
    respected; nodes of several agents overlap). A read: book it with POST /reservations.
    Agents that did not answer (their nodes left out of the search) are named in
    X-Piseduce-Unavailable. Each user may ask a burst of 20, then one every 3 s (429 beyond)."""
    await next_slot_limit.check(request, who.user.id)
    asked = BookingIn(
        nodes=body.nodes, count=body.count, filters=body.filters, start=body.after, hours=body.hours
    )
    refs = await h.refs()
    req = booking_request(asked, {r.name: r for r in refs})
    slot = await next_slot.find(h, identity_of(request, who), req)
    if slot.start is None or slot.end is None:
        words = "; ".join(slot.notes) or "no start fits"
        if slot.unreachable:
            raise HTTPException(503, f"{words}. Try again shortly.", headers={"Retry-After": "5"})
        raise HTTPException(409, f"No free slot: {words}.")
    partial(response, slot.notes)
    nodes = [NodeRefOut(agent=ref.name, node=n) for ref, names in slot.parts for n in names]
    return NextSlotOut(start=slot.start, end=slot.end, hours=slot.hours, nodes=nodes)
