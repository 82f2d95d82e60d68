"""What admins oversee on the agents' side: who holds each node now, and until when.

An admin's identity may list every user's reservations (`GET /api/reservations?all=true`, which
the agents refuse to anyone else); the admin Nodes page shows from it which nodes are in use and by
whom, next to the status the node itself has (available, maintenance, broken).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from piseduce.protocol import BUSY_STATUSES
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.models import ROLE_ADMIN


async def node_usage(
    h: AgentClient, ref: AgentRef, who: Identity, now: dt.datetime | None = None
) -> dict[str, dict[str, Any]]:
    """{node: {owner, status, start, end, id}} of the reservation holding each node of `ref` now
    (its window has begun, or a process runs on it). Empty when the agent cannot say."""
    if who.role != ROLE_ADMIN:
        return {}
    held, _errors = await h.held(who, status="active", refs=[ref], everyone=True)
    now = now or dt.datetime.now(dt.UTC)
    out: dict[str, dict[str, Any]] = {}
    for x in held:
        r = x.r
        if not (r.start <= now < r.end) and r.status not in BUSY_STATUSES:
            continue
        current = out.get(r.node)
        if current is None or r.start < current["start"]:
            out[r.node] = {"owner": r.owner, "status": r.status, "start": r.start, "end": r.end, "id": r.id,
                           "bin": r.bin}
    return out
