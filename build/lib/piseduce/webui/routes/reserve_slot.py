"""The Reserve page's "Find next free slot" (POST /reserve/next-slot): the booking form as it is
read for Reserve, answered with the earliest start it could be booked at (JSON for app.js, which
fills the form's start with it, and keeps the answer for Reserve to book by name). Nothing is booked."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from piseduce.webui import next_slot, next_slot_limit
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.agents import iso
from piseduce.webui.models import User
from piseduce.webui.routes.reserve import _request_of
from piseduce.webui.web import browser_zone, current_user, identity, local_text

router = APIRouter()
NOW_SLACK = dt.timedelta(seconds=90)  # an answer this close is "now" (the form's own choice)


@router.post("/reserve/next-slot")
async def find_next_slot(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> JSONResponse:
    refused = await next_slot_limit.refusal(request, user.id)
    if refused is not None:
        return JSONResponse({"detail": refused.message}, 429, {"Retry-After": refused.retry_after})
    form = await request.form()
    req, errors = _request_of(form, {r.id: r for r in await h.refs()})
    if req is None:
        return JSONResponse({"detail": " ".join(errors)}, status_code=400)
    slot = await next_slot.find(h, identity(request, user), req)
    if slot.start is None or slot.end is None:
        words = "; ".join(slot.notes) or "no start fits"
        retry = " Try again shortly." if slot.unreachable else " Try a shorter duration or fewer nodes."
        return JSONResponse({"detail": f"No free slot: {words}.{retry}"}, status_code=409)
    zone = browser_zone(request)
    nodes = [f"{ref.name}/{n}" for ref, names in slot.parts for n in names]
    now = slot.start - dt.datetime.now(dt.UTC) <= NOW_SLACK
    when = "now" if now else local_text(slot.start, zone)
    shown = ", ".join(nodes[:8]) + (f" and {len(nodes) - 8} more" if len(nodes) > 8 else "")
    return JSONResponse(
        {
            "start": iso(slot.start),
            "end": iso(slot.end),
            "now": now,
            "hours": slot.hours,
            "nodes": nodes,
            # What Reserve books once answered (the booking form's node keys: agent id/name).
            "keys": [f"{ref.id}/{n}" for ref, names in slot.parts for n in names],
            "detail": f"Free {when} for {slot.hours:g} h ({shown}). "
            "The start is filled in: press Reserve to book it."
            + (f" Not asked: {'; '.join(slot.notes)}." if slot.notes else ""),
        }
    )
