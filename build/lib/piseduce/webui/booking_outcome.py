"""A booking is all or nothing, across agents too (DESIGN §5.1): each agent books its part in one
transaction, and when one part is refused the parts already booked on the other agents are given
back at once (cancelled: nothing ran on them yet), and the result says why."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from piseduce.protocol import BookingOut
from piseduce.webui.agent_client import AgentClient, Result
from piseduce.webui.agents import AgentRef, Identity

ALL_OR_NOTHING = "Nothing was booked: a booking is all or nothing."


@dataclass
class Outcome:
    booked: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # The HTTP status of each refused part (0: no answer), for the users' API's own status.
    codes: list[int] = field(default_factory=list)


def booked_of(reply: Result[BookingOut]) -> list[dict[str, Any]]:
    booking = reply.value.reservations if reply.value is not None else []
    return [
        {"agent": reply.agent.name, "ref": reply.agent, "node": r.node, "id": r.id, "start": r.start,
         "end": r.end, "status": r.status, "data": r}  # data: the users' API answers it whole
        for r in booking
    ]


async def settle(
    h: AgentClient, who: Identity, parts: list[tuple[AgentRef, str]], replies: list[Result[BookingOut]]
) -> Outcome:
    """The outcome of one booking made of `parts` (agent, what in words), one reply each: every
    part booked, or none (the booked parts are cancelled when another part was refused)."""
    outcome = Outcome()
    for (ref, what), reply in zip(parts, replies, strict=True):
        if reply.ok:
            outcome.booked.extend(booked_of(reply))
        else:
            outcome.refused.append(f"{what} on {ref.name}: not booked — {reply.error}")
            outcome.codes.append(reply.status)
    if not outcome.refused or not outcome.booked:
        return outcome
    kept = await _give_back(h, who, outcome.booked)
    kept_ids = {(b["agent"], b["id"]) for b in kept}
    given = [b for b in outcome.booked if (b["agent"], b["id"]) not in kept_ids]
    note = ALL_OR_NOTHING
    if given:
        names = ", ".join(f"{b['node']} ({b['agent']})" for b in given)
        note += f" The node(s) booked meanwhile were given back at once: {names}."
    outcome.refused.append(note)
    for b in kept:
        outcome.refused.append(
            f"{b['node']} on {b['agent']} was booked but could not be given back ({b['error']}): "
            "cancel it on Configure."
        )
    outcome.booked = []
    return outcome


async def _give_back(h: AgentClient, who: Identity, booked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cancel each booked reservation; the ones that could not be (with the reason in 'error')."""
    replies = await asyncio.gather(*(h.act(b["ref"], who, b["id"], "destroy") for b in booked))
    kept = []
    for b, reply in zip(booked, replies, strict=True):
        if not reply.ok:
            kept.append({**b, "error": reply.error})
    return kept
