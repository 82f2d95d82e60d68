"""Monitoring: power and temperature of every node of every raspberry agent, over 1 h, 6 h or 24 h.

Every user sees every node (power and temperature say nothing about anyone's work, as in the
original). The agents are asked concurrently through the AgentClient (short timeouts, circuit
breakers): a dead agent is named on the page, the others are drawn. The page carries its first
data set; `static/monitoring.js` draws it as SVG line charts and then refreshes it from
`/monitoring/data` while the tab is visible (replacing the data, never appending to it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from piseduce.protocol import Feature, MonitoringOut
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.models import User
from piseduce.webui.web import current_user, identity, render

router = APIRouter(prefix="/monitoring")

PERIODS = {"1h": "1 hour", "6h": "6 hours", "24h": "24 hours"}
KINDS = ("power", "temperature")
REFRESH_SECONDS = 30


def _period(request: Request) -> str:
    value = request.query_params.get("period", "1h")
    return value if value in PERIODS else "1h"


def _series(data: MonitoringOut | None) -> list[dict[str, Any]]:
    """The agent's series (checked by the protocol: names, times and numbers, one per time)."""
    return [{"node": s.subject, "t": list(s.t), "v": list(s.v)} for s in (data.series if data else [])]


async def collect(h: AgentClient, who: Identity, period: str) -> dict[str, Any]:
    refs = [r for r in await h.refs() if r.supports(Feature.MONITORING)]

    async def one(ref: AgentRef) -> dict[str, Any]:
        replies = await asyncio.gather(*(h.monitoring(ref, who, k, period) for k in KINDS))
        failed = next((r for r in replies if not r.ok), None)
        if failed is not None:
            return {"agent": ref.name, "error": failed.error}
        return {
            "agent": ref.name,
            "error": "",
            **{k: _series(r.value) for k, r in zip(KINDS, replies, strict=True)},
        }

    agents = list(await asyncio.gather(*(one(r) for r in refs)))
    return {
        "period": period,
        "agents": [a for a in agents if not a["error"]],
        "errors": [f"{a['agent']}: {a['error']}" for a in agents if a["error"]],
    }


# Samples of one round share its time; rounds are at least a second apart (monitor_period_seconds).
SAME_ROUND_SECONDS = 0.5


def _seconds(iso: str) -> float:
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def latest(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The current value of every node: the page's table (readable without JavaScript).

    A value is current only when it comes from its agent's newest round (every sample of a round
    has the round's time): a board powered off, or unreachable, stops being measured, and its
    last temperature must not be shown as today's. Such a value moves to `<kind>_at` (when it was
    last read); a board whose current power is 0 W is `off`. `static/monitoring.js` does the same."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for a in data["agents"]:
        newest = max((_seconds(s["t"][-1]) for kind in KINDS for s in a.get(kind, []) if s["t"]), default=0.0)
        for kind in KINDS:
            for s in a.get(kind, []):
                if not s["t"]:
                    continue
                row = rows.setdefault((a["agent"], s["node"]), {"agent": a["agent"], "node": s["node"]})
                if _seconds(s["t"][-1]) >= newest - SAME_ROUND_SECONDS:
                    row[kind] = s["v"][-1]
                else:
                    row[f"{kind}_at"] = s["t"][-1]
                row["time"] = max(row.get("time", ""), s["t"][-1])
    for row in rows.values():
        row["off"] = row.get("power") == 0
        if row["off"]:
            row.pop("temperature", None)
    return [rows[k] for k in sorted(rows)]


@router.get("")
async def monitoring_page(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    period = _period(request)
    data = await collect(h, identity(request, user), period)
    return render(
        request,
        "monitoring.html",
        {
            "page": "monitoring",
            "period": period,
            "periods": PERIODS,
            "data": data,
            "latest": latest(data),
            "refresh": REFRESH_SECONDS,
        },
    )


@router.get("/data")
async def monitoring_data(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    return JSONResponse(await collect(h, identity(request, user), _period(request)))
