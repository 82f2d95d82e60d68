"""Monitoring: power and temperature of every node of every raspberry agent, over 1 h, 6 h or 24 h.

Every user sees every node (power and temperature say nothing about anyone's work, as in the
original). The agents are asked concurrently through the AgentHub (short timeouts, circuit
breakers): a dead agent is named on the page, the others are drawn. The page carries its first
data set; `static/monitoring.js` draws it as SVG line charts and then refreshes it from
`/monitoring/data` while the tab is visible (replacing the data, never appending to it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from piseduce.webui.agents import AgentHub, AgentRef, Identity
from piseduce.webui.models import User
from piseduce.webui.web import current_user, hub, identity, render

router = APIRouter(prefix="/monitoring")

PERIODS = {"1h": "1 hour", "6h": "6 hours", "24h": "24 hours"}
KINDS = ("power", "temperature")
MONITORED_TYPES = ("raspberry",)
REFRESH_SECONDS = 30


def _period(request: Request) -> str:
    value = request.query_params.get("period", "1h")
    return value if value in PERIODS else "1h"


def _series(data: Any) -> list[dict[str, Any]]:
    """The agent's series, checked: names and numbers only, whatever an agent answers."""
    out = []
    items = data.get("series") if isinstance(data, dict) else None
    for s in items if isinstance(items, list) else []:
        if not isinstance(s, dict):
            continue
        t, v = s.get("t"), s.get("v")
        if not (isinstance(t, list) and isinstance(v, list) and len(t) == len(v)):
            continue
        points = [
            (str(a), float(b))
            for a, b in zip(t, v, strict=True)
            if isinstance(a, str) and isinstance(b, int | float) and not isinstance(b, bool)
        ]
        out.append(
            {
                "node": str(s.get("subject", ""))[:128],
                "t": [p[0] for p in points],
                "v": [p[1] for p in points],
            }
        )
    return out


async def collect(h: AgentHub, who: Identity, period: str) -> dict[str, Any]:
    refs = [r for r in h.refs() if r.node_type in MONITORED_TYPES]

    async def one(ref: AgentRef) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(
                h.call(ref, "GET", "/api/monitoring", who=who, params={"kind": k, "period": period})
                for k in KINDS
            )
        )
        failed = next((r for r in replies if not r.ok), None)
        if failed is not None:
            return {"agent": ref.name, "error": failed.error}
        return {
            "agent": ref.name,
            "error": "",
            **{k: _series(r.data) for k, r in zip(KINDS, replies, strict=True)},
        }

    agents = list(await asyncio.gather(*(one(r) for r in refs)))
    return {
        "period": period,
        "agents": [a for a in agents if not a["error"]],
        "errors": [f"{a['agent']}: {a['error']}" for a in agents if a["error"]],
    }


def latest(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The last value of every node: the page's table (readable without JavaScript)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for a in data["agents"]:
        for kind in KINDS:
            for s in a.get(kind, []):
                if s["t"]:
                    row = rows.setdefault((a["agent"], s["node"]), {"agent": a["agent"], "node": s["node"]})
                    row[kind] = s["v"][-1]
                    row["time"] = max(row.get("time", ""), s["t"][-1])
    return [rows[k] for k in sorted(rows)]


@router.get("")
async def monitoring_page(
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
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
    request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)
) -> Response:
    return JSONResponse(await collect(h, identity(request, user), _period(request)))
