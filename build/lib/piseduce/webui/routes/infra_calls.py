"""What the infrastructure pages share: one agent's block of a page (its items or why they are
missing), the agents that support a feature, and the calls that change something with their
outcome in words (a timed-out call on an agent that still answers is only slow)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from piseduce.protocol import Deleted, Feature
from piseduce.webui import audit
from piseduce.webui.agent_client import AgentClient, Result
from piseduce.webui.agents import AgentRef
from piseduce.webui.models import User
from piseduce.webui.routes.infra_forms import ITEM_NAME_RE
from piseduce.webui.web import flash, identity, redirect

T = TypeVar("T")


@dataclass
class AgentBlock:
    """One agent's section of a page: its items, or why they are missing."""

    agent: AgentRef
    items: Sequence[Any] = field(default_factory=list)  # the protocol's models of the collection
    error: str = ""
    switches: list[str] = field(default_factory=list)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> who holds it now
    detections: list[Any] = field(default_factory=list)  # a raspberry agent's node detections

    @property
    def editable(self) -> bool:
        """Admins register its nodes (otherwise a mirror of a testbed's inventory: a local change
        would be undone)."""
        return self.agent.supports(Feature.NODE_REGISTRY)

    @property
    def power(self) -> bool:
        """Its nodes sit on PoE switch ports."""
        return self.agent.supports(Feature.POWER)


async def find_agent(h: AgentClient, agent_id: int, feature: Feature | None = None) -> AgentRef | None:
    """The agent `agent_id`, if it supports `feature`."""
    ref = await h.find(agent_id)
    return ref if ref is not None and (feature is None or ref.supports(feature)) else None


async def agents_with(h: AgentClient, feature: Feature) -> list[AgentRef]:
    return [r for r in await h.refs() if r.supports(feature)]


async def alive_but_slow(h: AgentClient, ref: AgentRef, reply: Result[Any]) -> bool:
    """After a timed-out call: True when the agent still answers its health check, i.e. only this
    request was slow (an SNMP switch that does not answer, a checksum being computed). The
    breaker, opened by the timeout, is closed again so the agent's other pages are not blanked."""
    if reply.status != 0 or "did not answer" not in reply.error:
        return False
    health = await h.health(ref)
    if health.ok:
        h.breaker(ref.id).success()
        return True
    return False


async def change(
    h: AgentClient, ref: AgentRef, call: Awaitable[Result[T]], *, slow_hint: str = ""
) -> tuple[Result[T], str]:
    """A state-changing call; returns the reply and, when it failed, the message for the admin."""
    reply = await call
    if reply.ok:
        return reply, ""
    if await alive_but_slow(h, ref, reply):
        return reply, (
            f"{ref.name}: the agent did not finish within {h.timeout:g} s"
            + (f"; {slow_hint}" if slow_hint else "")
            + ". Reload the page to see the outcome."
        )
    return reply, reply.words


def back_to(request: Request, page: str, message: str, kind: str = "error") -> Response:
    """Flash a message and send the admin back to the page."""
    flash(request, message, kind)
    return redirect(request, page)


async def delete_item(
    request: Request,
    me: User,
    h: AgentClient,
    agent_id: int,
    name: str,
    what: str,
    collection: str,
    page: str,
    done: Callable[[AgentRef, Result[Deleted]], str],
    name_re: re.Pattern[str] = ITEM_NAME_RE,
) -> Response:
    """DELETE /api/admin/<collection>/<name> on the agent, then back to `page` with the outcome in words."""
    ref = await find_agent(h, agent_id)
    if ref is None or not name_re.match(name):
        return back_to(request, page, f"No such agent or {what}.")
    reply, problem = await change(h, ref, h.delete(ref, identity(request, me), collection, name))
    if problem:
        return back_to(request, page, f"{what.capitalize()} {name} not deleted: {problem}")
    await audit.note(request, me, f"{what}.delete", (what, f"{ref.name}/{name}"))
    return back_to(request, page, done(ref, reply), "ok")


def not_managed(reply: Result[Any], what: str) -> str:
    if reply.status in (404, 405):
        return f"this agent does not manage {what} (its driver has no such admin routes)"
    return reply.error


async def list_block(reply: Awaitable[Result[list[T]]], what: str) -> AgentBlock:
    answer = await reply
    if answer.value is None:
        return AgentBlock(answer.agent, error=not_managed(answer, what))
    return AgentBlock(answer.agent, items=answer.value)
