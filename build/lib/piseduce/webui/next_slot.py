"""The next free slot across agents (issue 17): the earliest start at or after a time where a
booking request (named nodes, or a count matching filters) could be booked all at once.

Each agent answers for its own nodes (POST /api/next-slot: a sweep over its calendar, turnaround
gap and per-user limit respected). Here the answers are combined, at whole minutes:
- named nodes (of one agent or several): every agent is asked for its earliest start at or after
  `t`, `t` becomes the latest answer, until all answer the same `t` (each answer is the earliest
  for its nodes, so the first `t` they agree on is the earliest common start);
- a count: at a candidate `t`, each matching agent says how many nodes it can give then (a binary
  search of its answers); short of the count, the next candidate is the earliest moment one of
  them can give one more, since no start before it can do better. Agents holding the count alone
  and counts spread over several agents are then the same search.
The answer is what the Reserve page and the API then book (webui/booking.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from piseduce.protocol import NODE_AVAILABLE, NextSlotOut
from piseduce.webui.agent_client import AgentClient, Result
from piseduce.webui.agents import AgentRef, Identity, iso
from piseduce.webui.booking import BookingRequest
from piseduce.webui.node_filters import agent_expressible, agent_properties, describe, matches

# One part of a plan: the agent and the one filter (agent schema) it is asked for.
Part = tuple[AgentRef, dict[str, Any]]
MAX_ROUNDS = 48  # candidate starts tried before giving up (each round asks every agent)


@dataclass
class Slot:
    """The answer: `start` None when no start fits, with the reasons in `notes`."""

    start: dt.datetime | None = None
    hours: float = 0
    parts: list[tuple[AgentRef, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreachable: bool = False  # an agent did not answer (try again), rather than "no slot"

    @property
    def end(self) -> dt.datetime | None:
        return None if self.start is None else self.start + dt.timedelta(hours=self.hours)


def _ceil_minute(t: dt.datetime) -> dt.datetime:
    """The next whole minute (or `t`): agents answering "now" on their own clocks differ by
    milliseconds; a start on a whole minute is one they can all agree on."""
    floor = t.replace(second=0, microsecond=0)
    return floor if floor == t else floor + dt.timedelta(minutes=1)


async def _ask(
    h: AgentClient, who: Identity, part: Part, after: dt.datetime, hours: float
) -> Result[NextSlotOut]:
    ref, flt = part
    body = {"filters": [flt], "after": iso(after), "duration_hours": hours}
    return await h.next_slot(ref, who, body)


async def common_start(
    h: AgentClient, who: Identity, plan: list[Part], after: dt.datetime, hours: float
) -> Slot:
    """The earliest whole-minute start ≥ `after` where every part of `plan` is free at once."""
    t = after
    for _ in range(MAX_ROUNDS):
        replies = await asyncio.gather(*(_ask(h, who, p, t, hours) for p in plan))
        failed = [r for r in replies if r.value is None]
        if failed:
            down = any(r.status == 0 or r.status >= 500 for r in failed)
            return Slot(notes=[r.words for r in failed], unreachable=down)
        answers = [r.value for r in replies if r.value is not None]
        if any(a.start is None for a in answers):
            return Slot(
                notes=[
                    f"{r.agent.name}: {r.value.detail}" for r in replies if r.value and r.value.start is None
                ]
            )
        starts = [a.start for a in answers if a.start is not None]
        latest = max(starts)
        # Whole minutes only: the Reserve form's start has no seconds, and a booking a few
        # seconds later than a sweep's answer may no longer fit.
        if all(s == latest for s in starts) and _ceil_minute(latest) == latest:
            return Slot(
                latest, hours, [(r.agent, list(a.nodes)) for r, a in zip(replies, answers, strict=True)]
            )
        t = _ceil_minute(latest)
    return Slot(notes=[f"no common start found across {len(plan)} agents after {MAX_ROUNDS} rounds"])


@dataclass
class _Agent:
    """One agent's matching nodes, for a count: how many, and the filter it is asked with."""

    ref: AgentRef
    size: int
    properties: dict[str, Any]

    def part(self, k: int) -> Part:
        return self.ref, {"count": k, "properties": self.properties}


class _Unanswered(Exception):
    def __init__(self, reply: Result[NextSlotOut]) -> None:
        super().__init__(reply.words)
        self.reply = reply


async def _matching(
    h: AgentClient, who: Identity, refs: list[AgentRef], req: BookingRequest
) -> tuple[list[_Agent], list[str]]:
    """Per agent, its available nodes matching the filters (the booking's own test); and the
    agents that did not answer, in words."""
    replies = await h.fan_out(refs, lambda r: h.nodes(r, who))
    out: list[_Agent] = []
    for r in replies:
        if r.value is None:
            continue
        ref = r.agent
        match = [
            n
            for n in r.value
            if n.status == NODE_AVAILABLE
            and matches({**n.properties, "agent": ref.name, "type": ref.node_type}, req.filters)
        ]
        if match:
            props = agent_properties(req.filters, dict(match[0].properties))
            out.append(_Agent(ref, len(match), props))
    return out, [r.words for r in replies if r.value is None]


async def _capacity(
    h: AgentClient, who: Identity, a: _Agent, t: dt.datetime, hours: float, most: int, refusals: list[str]
) -> tuple[int, dt.datetime | None, dt.datetime | None]:
    """How many matching nodes agent `a` can give at `t` (at most `most`), the earliest start
    after `t` where it can give one more (None: never within its horizon), and where it can give
    `most` (None: never). "k free at t" holds for every k below the largest one, so it is a
    binary search of the agent's answers."""

    async def earliest(k: int) -> dt.datetime | None:
        reply = await _ask(h, who, a.part(k), t, hours)
        if reply.value is None:
            if reply.status in (409, 422):  # e.g. more than the agent's per-user limit: never
                refusals.append(reply.words)
                return None
            raise _Unanswered(reply)
        return reply.value.start

    lo, hi = 0, min(most, a.size)
    more = full = await earliest(hi)
    if more == t:
        return hi, None, full
    while hi - lo > 1:
        mid = (lo + hi) // 2
        e = await earliest(mid)
        if e == t:
            lo = mid
        else:
            hi, more = mid, e
    return lo, more, full


async def count_start(
    h: AgentClient, who: Identity, agents_: list[_Agent], req: BookingRequest, after: dt.datetime
) -> Slot:
    """The earliest whole-minute start ≥ `after` where `req.count` matching nodes, spread over
    the agents, are free at once. At a candidate `t` each agent says how many it can give; short
    of the count, no start before the earliest moment one of them can give one more works, so
    that moment is the next candidate."""
    t = _ceil_minute(after)
    refusals: list[str] = []  # what agents said never fits (their per-user limit...)
    for _ in range(MAX_ROUNDS):
        try:
            found = await asyncio.gather(
                *(_capacity(h, who, a, t, req.hours, req.count, refusals) for a in agents_)
            )
        except _Unanswered as exc:
            r = exc.reply
            return Slot(notes=[r.words], unreachable=r.status == 0 or r.status >= 500)
        alone = [full for a, (_, _, full) in zip(agents_, found, strict=True) if a.size >= req.count and full]
        if sum(k for k, _, _ in found) >= req.count:
            plan: list[Part] = []
            remaining = req.count
            for a, (k, _, _) in sorted(zip(agents_, found, strict=True), key=lambda x: -x[1][0]):
                if remaining > 0 and k > 0:
                    plan.append(a.part(min(k, remaining)))
                    remaining -= min(k, remaining)
            return await common_start(h, who, plan, t, req.hours)
        later = [e for _, e, _ in found if e is not None]
        if not later:
            why = list(dict.fromkeys(refusals)) or ["no start within the agents' booking horizons fits"]
            return Slot(notes=why)
        t = _ceil_minute(min(later))
    if alone:  # the earliest start one agent gives alone; a spread start before it was not proven
        best = min(alone)
        whole = [a for a in agents_ if a.size >= req.count]
        slots = await asyncio.gather(
            *(common_start(h, who, [a.part(req.count)], best, req.hours) for a in whole)
        )
        found_alone = [x for x in slots if x.start is not None]
        if found_alone:
            return min(found_alone, key=lambda x: x.start or best)
    return Slot(notes=[f"no start found after {MAX_ROUNDS} candidate starts: ask for a later start"])


async def find(h: AgentClient, who: Identity, req: BookingRequest) -> Slot:
    """The earliest start ≥ `req.start` (now when `req.now`) for `req.hours` where `req` could be
    booked all at once, with the nodes each agent would give; `notes` say why not otherwise."""
    refs = {r.id: r for r in await h.refs()}
    after = dt.datetime.now(dt.UTC) if req.now else req.start
    notes: list[str] = []
    if req.count:
        if not agent_expressible(req.filters):
            return Slot(
                hours=req.hours,
                notes=[
                    "'is not' filters cannot be searched for a free slot: use 'is', 'at least' or 'at most'"
                ],
            )
        matched, notes = await _matching(h, who, list(refs.values()), req)
        have = sum(a.size for a in matched)
        if have < req.count:
            words = (
                f"only {have} available node(s) match {describe(req.filters)}: "
                f"{req.count} can never be booked at once"
            )
            return Slot(hours=req.hours, notes=[*notes, words], unreachable=bool(notes))
        slot = await count_start(h, who, matched, req, after)
    else:
        plan = [
            (refs[aid], {"nodes": list(dict.fromkeys(names))})
            for aid, names in req.nodes.items()
            if aid in refs
        ]
        if not plan:
            return Slot(hours=req.hours, notes=["nothing to search: name nodes or give a count"])
        slot = await common_start(h, who, plan, _ceil_minute(after), req.hours)
    slot.hours = req.hours
    slot.notes = [*notes, *slot.notes]
    return slot
