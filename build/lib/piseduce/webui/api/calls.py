"""The agent calls of the users' API, through the web UI's typed agent client (the same methods
and the same identity the pages use), with an agent's refusal turned into the API's own error
(`{"detail": …}` with a 4xx that means the same thing).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from piseduce.protocol import EnvironmentOut, FormField, ReservationOut
from piseduce.webui.agent_client import AgentClient, Result
from piseduce.webui.agents import SERVICE_IDENTITY, AgentRef, Identity
from piseduce.webui.api.auth import Caller


def refusal(reply: Result[Any], what: str) -> HTTPException:
    """An agent's failed answer as the API's error: its 404, 409 and 403 mean the same here; its
    bad-input answers are 422; no answer (or a malformed one) is 503 (try again), never a 500."""
    if reply.status == 0 or reply.status >= 500 or 200 <= reply.status < 300:
        return HTTPException(
            503, f"{what}: agent {reply.words}; try again later.", headers={"Retry-After": "5"}
        )
    if reply.status == 404:
        return HTTPException(404, f"{what}: not found (not yours, or no such reservation).")
    if reply.status in (403, 409):
        return HTTPException(reply.status, f"{what}: {reply.error}")
    if reply.status == 401:
        return HTTPException(
            503,
            f"{what}: agent {reply.agent.name} refuses the web UI's token; tell an administrator.",
            headers={"Retry-After": "30"},
        )
    return HTTPException(422, f"{what}: {reply.error}")


async def agent_named(h: AgentClient, name: str) -> AgentRef:
    for ref in await h.refs():
        if ref.name == name:
            return ref
    raise HTTPException(404, f"No agent is named {name[:80]!r}: GET /api/v1/agents lists them.")


async def agents_of(h: AgentClient, name: str | None) -> list[AgentRef]:
    """Every agent, or the one named (404 when there is none of that name)."""
    return [await agent_named(h, name)] if name else await h.refs()


async def reservations(
    h: AgentClient, ident: Identity, refs: list[AgentRef], status: str, everyone: bool
) -> tuple[list[tuple[AgentRef, ReservationOut]], list[str]]:
    """The caller's reservations of `refs` (every user's with `everyone`, admins only), and each
    agent that failed in words (the client keeps a user to their own, whatever an agent answers)."""
    held, errors = await h.held(ident, status=status, refs=refs, everyone=everyone)
    return [(x.agent, x.r) for x in held], errors


async def reservation(
    h: AgentClient, who: Caller, ident: Identity, ref: AgentRef, rid: int
) -> ReservationOut:
    """One reservation with its events; 404 when it is not the caller's (admins: anyone's)."""
    reply = await h.reservation(ref, ident, rid)
    what = f"Reservation {ref.name}/{rid}"
    if reply.value is None:
        raise refusal(reply, what)
    if not who.is_admin and reply.value.owner != ident.email:
        raise HTTPException(404, f"{what}: not found (not yours, or no such reservation).")
    return reply.value


async def form(h: AgentClient, ident: Identity, ref: AgentRef, rid: int) -> list[FormField]:
    reply = await h.form(ref, ident, rid)
    if reply.value is None:
        raise refusal(reply, f"The deploy form of {ref.name}/{rid}")
    return reply.value


def _done(reply: Result[Any], what: str) -> None:
    if reply.value is None:
        raise refusal(reply, what)


async def deploy(h: AgentClient, ident: Identity, ref: AgentRef, rid: int, values: dict[str, Any]) -> None:
    _done(await h.deploy(ref, ident, rid, values), f"deploy of {ref.name}/{rid}")


async def act(h: AgentClient, ident: Identity, ref: AgentRef, rid: int, action: str) -> None:
    """destroy, reboot, redeploy or bootfiles of one reservation."""
    _done(await h.act(ref, ident, rid, action), f"{action} of {ref.name}/{rid}")


async def extend(h: AgentClient, ident: Identity, ref: AgentRef, rid: int, hours: float) -> None:
    _done(await h.extend(ref, ident, rid, hours), f"extend of {ref.name}/{rid}")


async def save_environment(h: AgentClient, ident: Identity, ref: AgentRef, rid: int, name: str) -> None:
    _done(await h.register_env(ref, ident, rid, name), f"save-environment of {ref.name}/{rid}")


async def environments(h: AgentClient, refs: list[AgentRef]) -> list[tuple[AgentRef, EnvironmentOut]]:
    """The environments of the agents that keep a catalogue, read with the web UI's own admin
    identity (the agents keep that list for admins); the caller filters out others' private ones."""
    reader = Identity(email=SERVICE_IDENTITY.email, role="admin")
    replies = await h.fan_out(refs, lambda r: h.environments(r, reader))
    return [(reply.agent, e) for reply in replies for e in reply.value or []]
