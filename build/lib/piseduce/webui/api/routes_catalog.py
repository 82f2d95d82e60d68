"""/api/v1 agents, nodes, schedule and environments: what there is to book and when it is free."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from piseduce.api_models import AgentOut, EnvironmentOut, NodeOut, NodeScheduleOut, SlotOut
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agent_client import agents as client
from piseduce.webui.api import calls, views
from piseduce.webui.api.auth import Caller, caller, identity_of
from piseduce.webui.api.routes_reservations import partial
from piseduce.webui.node_filters import matches, parse_expression

router = APIRouter(tags=["catalogue"])

AgentQuery = Annotated[str | None, Query(max_length=64, description="Only this agent (by name)")]
MAX_WINDOW = dt.timedelta(days=31)


@router.get("/agents", response_model=list[AgentOut])
async def agents(_who: Caller = Depends(caller), h: AgentClient = Depends(client)) -> list[AgentOut]:
    """Every agent, with its state (up, down...), what it supports and its labels."""
    return [views.agent_out(h, ref) for ref in await h.refs()]


@router.get("/nodes", response_model=list[NodeOut])
async def nodes(
    request: Request,
    response: Response,
    filter: Annotated[list[str], Query(max_length=32, description="property OP value; OP: = != >= <=")] = [],  # noqa: A002, B006
    agent: AgentQuery = None,
    who: Caller = Depends(caller),
    h: AgentClient = Depends(client),
) -> Response:
    """The nodes of every agent (or of `agent`) matching every `filter`, with the Reserve page's
    syntax: `memory>=4G`, `model=RPI4B`, `type!=g5k` (sizes in binary units: 4G = 4 GiB)."""
    try:
        filters = [parse_expression(f) for f in filter]
    except ValueError as exc:
        raise HTTPException(422, f"{exc}.") from None
    ident = identity_of(request, who)
    refs = await calls.agents_of(h, agent)
    replies = await h.fan_out(refs, lambda r: h.nodes(r, ident))
    out: list[NodeOut] = []
    errors = []
    for reply in replies:
        if reply.value is None:
            errors.append(reply.words)
            continue
        ref = reply.agent
        for n in reply.value:
            if matches({**n.properties, "agent": ref.name, "type": ref.node_type}, filters):
                out.append(
                    NodeOut(
                        agent=ref.name,
                        name=n.name,
                        type=ref.node_type,
                        status=n.status,
                        properties=dict(n.properties),
                    )
                )
    partial(response, errors)
    return views.listed(out, response)


def _when(text: str | None, default: dt.datetime, what: str) -> dt.datetime:
    if not text:
        return default
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{what}: {text[:40]!r} is not an ISO-8601 time.") from None
    if t.tzinfo is None:
        raise HTTPException(422, f"{what}: give a time zone (such as 2030-01-01T10:00:00Z).")
    if not dt.datetime(2000, 1, 1, tzinfo=dt.UTC) <= t <= dt.datetime(2200, 1, 1, tzinfo=dt.UTC):
        raise HTTPException(422, f"{what}: between the years 2000 and 2200.")
    return t.astimezone(dt.UTC)


@router.get("/schedule", response_model=list[NodeScheduleOut])
async def schedule(
    request: Request,
    response: Response,
    start: Annotated[str | None, Query(max_length=64, description="ISO-8601; default now")] = None,
    end: Annotated[
        str | None, Query(max_length=64, description="ISO-8601; default a day after start")
    ] = None,
    agent: AgentQuery = None,
    who: Caller = Depends(caller),
    h: AgentClient = Depends(client),
) -> list[NodeScheduleOut]:
    """The busy slots of every node in the window (at most 31 days); `mine` marks the caller's."""
    t0 = _when(start, dt.datetime.now(dt.UTC), "start")
    t1 = _when(end, t0 + dt.timedelta(days=1), "end")
    if not t0 < t1 or t1 - t0 > MAX_WINDOW:
        raise HTTPException(422, "end must come after start, at most 31 days later.")
    ident = identity_of(request, who)
    refs = await calls.agents_of(h, agent)
    node_replies, sched_replies = await asyncio.gather(
        h.fan_out(refs, lambda r: h.nodes(r, ident)),
        h.fan_out(refs, lambda r: h.schedule(r, ident, t0, t1)),
    )
    out: list[NodeScheduleOut] = []
    errors = []
    for nodes_reply, sched in zip(node_replies, sched_replies, strict=True):
        if nodes_reply.value is None or sched.value is None:
            errors.append(nodes_reply.words if nodes_reply.value is None else sched.words)
            continue
        busy = sched.value.nodes
        for n in nodes_reply.value:
            slots = [SlotOut(start=s.start, end=s.end, mine=s.mine) for s in busy.get(n.name, [])]
            out.append(NodeScheduleOut(agent=nodes_reply.agent.name, node=n.name, slots=slots))
    partial(response, errors)
    return out


@router.get("/environments", response_model=list[EnvironmentOut])
async def environments(
    agent: AgentQuery = None, who: Caller = Depends(caller), h: AgentClient = Depends(client)
) -> list[EnvironmentOut]:
    """The environments offered: everyone's and the caller's own (admins: all). Agents without a
    catalogue (Grid'5000, IoT-LAB) offer theirs in each reservation's deploy form (…/form)."""
    found = await calls.environments(h, await calls.agents_of(h, agent))
    out = []
    for ref, e in found:
        if e.owner and e.owner != who.user.email and not who.is_admin:
            continue
        if e.state == "disabled":
            continue
        out.append(
            EnvironmentOut(
                agent=ref.name,
                name=e.name,
                description=e.description,
                default=e.default,
                owner=e.owner or None,
            )
        )
    return out
