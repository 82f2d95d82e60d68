"""Booking: one code path for the Reserve page and the users' API (DESIGN §8).

A booking names nodes, or asks for a number of nodes matching filters (node_filters.py), for a
start (now or later), a duration and a bin. A count is spread over the agents that have free
matching nodes, most free first; each agent books its part in one transaction, and the whole is
all or nothing across agents (booking_outcome.settle gives back what was booked when a part is
refused). The page and the API differ only in how they read their input and show the outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from piseduce.protocol import NODE_AVAILABLE, BusySlot
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agents import AgentRef, Identity, iso
from piseduce.webui.booking_outcome import ALL_OR_NOTHING, Outcome, settle
from piseduce.webui.node_filters import Filter, agent_expressible, agent_properties, describe, matches

# (agent, the body of its part, what it is in words)
Part = tuple[AgentRef, dict[str, Any], str]


@dataclass
class BookingRequest:
    start: dt.datetime  # UTC; for "now", the time the request was read
    now: bool  # the agents are asked to start "now" (their own clock)
    hours: float
    bin: str = ""
    nodes: dict[int, list[str]] = field(default_factory=dict)  # agent id -> node names
    count: int = 0
    filters: list[Filter] = field(default_factory=list)

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(hours=self.hours)

    def base(self) -> dict[str, Any]:
        return {
            "start": "now" if self.now else iso(self.start),
            "duration_hours": self.hours,
            "bin": self.bin,
        }


# The agents' calendars (and the schedule routes) cover these years; beyond, date arithmetic
# overflows near year 9999 (a count booking answered 500).
FIRST_START = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LAST_START = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def start_problem(start: dt.datetime) -> str | None:
    """Why a booking cannot start then, in words (None: it may)."""
    if not FIRST_START <= start <= LAST_START:
        return "The start must be between the years 2000 and 2200."
    return None


def is_free(slots: list[BusySlot], start: dt.datetime, end: dt.datetime) -> bool:
    return not any(slot.start < end and slot.end > start for slot in slots)


@dataclass
class _Candidates:
    ref: AgentRef
    free: list[str]
    sample: dict[str, Any]


async def _candidates(
    h: AgentClient, who: Identity, refs: list[AgentRef], req: BookingRequest
) -> tuple[list[_Candidates], list[str]]:
    """Per agent, its free nodes matching the filters in the slot; the agents that failed, in words."""
    start, end = req.start, max(req.end, req.start + dt.timedelta(minutes=1))
    node_replies, sched_replies = await asyncio.gather(
        h.fan_out(refs, lambda r: h.nodes(r, who)),
        h.fan_out(refs, lambda r: h.schedule(r, who, start, end)),
    )
    out: list[_Candidates] = []
    notes: list[str] = []
    for nodes, sched in zip(node_replies, sched_replies, strict=True):
        if nodes.value is None:
            notes.append(nodes.words)
            continue
        ref = nodes.agent
        busy = sched.value.nodes if sched.value is not None else {}
        match = [
            n
            for n in nodes.value
            if n.status == NODE_AVAILABLE
            and matches({**n.properties, "agent": ref.name, "type": ref.node_type}, req.filters)
        ]
        if match:
            free = [n.name for n in match if is_free(busy.get(n.name, []), start, end)]
            out.append(_Candidates(ref, free, dict(match[0].properties)))
    return out, notes


async def plan_count(
    h: AgentClient, who: Identity, refs: list[AgentRef], req: BookingRequest
) -> tuple[list[Part], str]:
    """Spread `req.count` nodes matching the filters over the agents that have free ones; the
    parts, and why the count cannot be met ('' when it can)."""
    candidates, notes = await _candidates(h, who, refs, req)
    candidates.sort(key=lambda c: -len(c.free))
    described = describe(req.filters)
    by_names = not agent_expressible(req.filters)
    plan: list[Part] = []
    remaining = req.count
    for c in candidates:
        if remaining <= 0 or not c.free:
            continue
        k = min(remaining, len(c.free))
        if by_names:  # '!=' is the web UI's: the agent is given the nodes it matched
            body: dict[str, Any] = {"filters": [{"nodes": c.free[:k]}]}
        else:
            body = {"filters": [{"count": k, "properties": agent_properties(req.filters, c.sample)}]}
        plan.append((c.ref, body, f"{k} node(s) matching {described}"))
        remaining -= k
    if remaining <= 0:
        return plan, ""
    short = (
        f"{req.count} node(s) matching {described}: not booked — not enough free nodes in that slot "
        f"(only {req.count - remaining} free)"
    )
    if notes:
        short += " (" + "; ".join(notes) + ")"
    return plan, short


async def book(h: AgentClient, who: Identity, req: BookingRequest) -> Outcome:
    """Book `req` on behalf of `who`: every part or none. `Outcome.booked` lists what was booked
    (agent, ref, node, id, start, end, status), `Outcome.refused` says why not, part by part."""
    refs = {r.id: r for r in await h.refs()}
    parts: list[Part]
    if req.count:
        parts, short = await plan_count(h, who, list(refs.values()), req)
        if short:  # all or nothing: not a part of it
            return Outcome(refused=[f"{short}. {ALL_OR_NOTHING}"])
    else:
        parts = []
        for aid, picked in req.nodes.items():
            unique = list(dict.fromkeys(picked))
            parts.append((refs[aid], {"filters": [{"nodes": unique}]}, ", ".join(unique)))
    base = req.base()
    replies = await asyncio.gather(*(h.book(ref, who, {**base, **body}) for ref, body, _ in parts))
    return await settle(h, who, [(ref, what) for ref, _body, what in parts], replies)
