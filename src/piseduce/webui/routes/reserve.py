"""Reserve: the node x time calendar of every agent, property filters, and booking."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.dbtypes import to_utc
from piseduce.webui.agents import AgentHub, AgentRef, Identity, Reply, iso
from piseduce.webui.models import User
from piseduce.webui.web import browser_zone, current_user, form_list, form_str, hub, identity, is_htmx, render

router = APIRouter()

MAX_DAYS = 7
PSEUDO = ("agent", "type")  # filter keys the web UI handles itself
OPS = ("=", ">=", "<=")
PROP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class Row:
    agent_id: int
    agent: str
    node_type: str
    name: str
    status: str
    props: dict[str, Any]
    busy: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.agent_id}/{self.name}"

    @property
    def filter_props(self) -> dict[str, Any]:
        return {**self.props, "agent": self.agent, "type": self.node_type}


@dataclass
class Calendar:
    start: dt.datetime
    end: dt.datetime
    zone: ZoneInfo
    rows: list[Row]
    errors: list[str]
    hours: list[dict[str, Any]]
    days: list[dict[str, Any]]
    now_left: float | None


def _day(text: str | None, zone: ZoneInfo) -> dt.date:
    today = dt.datetime.now(zone).date()
    if not text:
        return today
    try:
        day = dt.date.fromisoformat(text[:10])
    except ValueError:
        return today
    # The agents' calendars cover 2000-2200; beyond, dt.date arithmetic overflows near year 1 or 9999.
    return day if 2000 <= day.year < 2200 else today


def _window(day: dt.date, days: int, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(0), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=days), dt.time(0), zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return to_utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _fmt(t: dt.datetime, zone: ZoneInfo) -> str:
    return t.astimezone(zone).strftime("%a %d %b %H:%M")


async def fetch_nodes(h: AgentHub, refs: list[AgentRef], who: Identity) -> list[Reply]:
    return await h.fan_out(refs, lambda r: h.call(r, "GET", "/api/nodes", who=who))


async def fetch_calendar(h: AgentHub, who: Identity, day: dt.date, days: int, zone: ZoneInfo) -> Calendar:
    start, end = _window(day, days, zone)
    refs = h.refs()
    params = {"start": iso(start), "end": iso(end)}
    node_replies, sched_replies = await asyncio.gather(
        fetch_nodes(h, refs, who),
        h.fan_out(refs, lambda r: h.call(r, "GET", "/api/schedule", who=who, params=params)),
    )
    span = (end - start).total_seconds()
    rows: list[Row] = []
    errors: list[str] = []
    for nodes, sched in zip(node_replies, sched_replies, strict=True):
        ref = nodes.agent
        if not nodes.ok or not isinstance(nodes.data, list):
            errors.append(nodes.words if not nodes.ok else f"{ref.name}: unexpected answer to /api/nodes")
            continue
        busy_by_node: dict[str, Any] = {}
        if sched.ok and isinstance(sched.data, dict) and isinstance(sched.data.get("nodes"), dict):
            busy_by_node = sched.data["nodes"]
        else:
            errors.append(f"{ref.name}: calendar unavailable ({sched.error or 'unexpected answer'})")
        for node in nodes.data:
            if not isinstance(node, dict) or not isinstance(node.get("name"), str):
                continue
            props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
            row = Row(ref.id, ref.name, ref.node_type, node["name"], str(node.get("status", "")), props or {})
            for slot in busy_by_node.get(row.name, []) or []:
                s, e = _parse_time(slot.get("start")), _parse_time(slot.get("end"))
                if s is None or e is None or e <= start or s >= end:
                    continue
                s, e = max(s, start), min(e, end)
                who_text = (
                    "yours" if slot.get("mine") else (slot.get("owner") or slot.get("reason") or "busy")
                )
                row.busy.append(
                    {
                        "left": round((s - start).total_seconds() / span * 100, 3),
                        "width": max(0.3, round((e - s).total_seconds() / span * 100, 3)),
                        "mine": bool(slot.get("mine")),
                        "title": f"{who_text}: {_fmt(s, zone)} – {_fmt(e, zone)}",
                    }
                )
            rows.append(row)
    rows.sort(key=lambda r: (r.agent, _natural(r.name)))
    hours = []
    t = start
    while t < end:
        local = t.astimezone(zone)
        hours.append(
            {
                "label": local.strftime("%H"),
                "left": (t - start).total_seconds() / span * 100,
                "major": local.hour % 6 == 0,
            }
        )
        t += dt.timedelta(hours=1)
    day_heads = []
    for i in range(days):
        d0, d1 = _window(day + dt.timedelta(days=i), 1, zone)
        day_heads.append(
            {
                "label": (day + dt.timedelta(days=i)).strftime("%A %d %B %Y"),
                "left": (d0 - start).total_seconds() / span * 100,
                "width": (d1 - d0).total_seconds() / span * 100,
            }
        )
    now = dt.datetime.now(dt.UTC)
    now_left = (now - start).total_seconds() / span * 100 if start <= now < end else None
    return Calendar(start, end, zone, rows, errors, hours, day_heads, now_left)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _calendar_context(cal: Calendar, day: dt.date, days: int) -> dict[str, Any]:
    props: dict[str, set[str]] = {}
    for row in cal.rows:
        for k, v in row.filter_props.items():
            if isinstance(v, str | int | float | bool):
                props.setdefault(k, set()).add(str(v))
    return {
        "cal": cal,
        "day": day.isoformat(),
        "days": days,
        "prev_day": (day - dt.timedelta(days=1)).isoformat(),
        "next_day": (day + dt.timedelta(days=1)).isoformat(),
        "today": dt.datetime.now(cal.zone).date().isoformat(),
        "prop_values": {k: sorted(v)[:200] for k, v in sorted(props.items())},
    }


async def _calendar_for(
    request: Request, user: User, h: AgentHub, day: str | None, days: int
) -> dict[str, Any]:
    """The calendar of `days` days from `day` (today by default) in the browser's time zone."""
    zone = browser_zone(request)
    d = _day(day, zone)
    days = min(max(days, 1), MAX_DAYS)
    cal = await fetch_calendar(h, identity(request, user), d, days, zone)
    return _calendar_context(cal, d, days)


@router.get("/reserve")
async def reserve_page(
    request: Request,
    day: str | None = None,
    days: int = 2,
    user: User = Depends(current_user),
    h: AgentHub = Depends(hub),
) -> Response:
    context = await _calendar_for(request, user, h, day, days)
    return render(request, "reserve.html", {"page": "reserve", **context})


@router.get("/reserve/calendar")
async def calendar_fragment(
    request: Request,
    day: str | None = None,
    days: int = 2,
    user: User = Depends(current_user),
    h: AgentHub = Depends(hub),
) -> Response:
    return render(request, "_calendar.html", await _calendar_for(request, user, h, day, days))


# ---------------------------------------------------------------- booking


def parse_filters(text: str) -> list[tuple[str, str, str]]:
    """The page's filter chips [{prop, op, value}] -> [(prop, op, value)]; ValueError in words."""
    try:
        raw = json.loads(text or "[]")
    except ValueError:
        raise ValueError("the filters are malformed") from None
    if not isinstance(raw, list) or len(raw) > 32:
        raise ValueError("at most 32 filters")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("the filters are malformed")
        prop, op, value = str(item.get("prop", "")), str(item.get("op", "=")), str(item.get("value", ""))
        if not PROP_RE.match(prop):
            raise ValueError(f"bad property name {prop[:64]!r}")
        if op not in OPS:
            raise ValueError(f"bad comparison {op[:8]!r}")
        if len(value) > 256:
            raise ValueError("a filter value is too long")
        if op != "=" and _number(value) is None:
            raise ValueError(f"{prop} {op} needs a number, not {value[:40]!r}")
        out.append((prop, op, value))
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def matches(props: dict[str, Any], filters: list[tuple[str, str, str]]) -> bool:
    """AND of every filter; '=' compares as text (case-insensitive), '>=' and '<=' as numbers."""
    for prop, op, value in filters:
        have = props.get(prop)
        if have is None:
            return False
        if op == "=":
            if str(have).lower() != value.lower():
                return False
            continue
        num, want = _number(str(have)), _number(value)
        if num is None or want is None or (op == ">=" and num < want) or (op == "<=" and num > want):
            return False
    return True


def agent_properties(filters: list[tuple[str, str, str]], sample: dict[str, Any]) -> dict[str, Any]:
    """The filters an agent evaluates itself (pseudo keys dropped), in the Filter schema's shape."""
    out: dict[str, Any] = {}
    for prop, op, value in filters:
        if prop in PSEUDO:
            continue
        if op == "=":
            have = sample.get(prop)
            if isinstance(have, bool):
                out[prop] = value.lower() in ("true", "1", "yes")
            elif isinstance(have, int | float) and _number(value) is not None:
                num = float(value)
                out[prop] = int(num) if num.is_integer() else num
            else:
                out[prop] = have if isinstance(have, str) else value
        else:
            bound = out.get(prop) if isinstance(out.get(prop), dict) else {}
            assert isinstance(bound, dict)
            bound["min" if op == ">=" else "max"] = float(value)
            out[prop] = bound
    return out


@dataclass
class Outcome:
    booked: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _booked(reply: Reply) -> list[dict[str, Any]]:
    data = reply.data if isinstance(reply.data, dict) else {}
    out = []
    for r in data.get("reservations", []) or []:
        if isinstance(r, dict):
            out.append(
                {
                    "agent": reply.agent.name,
                    "node": r.get("node"),
                    "id": r.get("id"),
                    "start": r.get("start"),
                    "end": r.get("end"),
                    "status": r.get("status"),
                }
            )
    return out


def _free(row: Row, busy: dict[str, Any], start: dt.datetime, end: dt.datetime) -> bool:
    for slot in busy.get(row.name, []) or []:
        s, e = _parse_time(slot.get("start")), _parse_time(slot.get("end"))
        if s is not None and e is not None and s < end and e > start:
            return False
    return True


@router.post("/reserve")
async def book(request: Request, user: User = Depends(current_user), h: AgentHub = Depends(hub)) -> Response:
    form = await request.form()
    who = identity(request, user)
    outcome = Outcome()
    errors: list[str] = []
    mode = form_str(form, "mode", 16)
    start_text = form_str(form, "start", 64)
    start_utc: dt.datetime | None
    if form_str(form, "when", 8) != "later" or not start_text:
        start_field: str = "now"
        start_utc = dt.datetime.now(dt.UTC)
    else:
        start_utc = _parse_time(start_text)
        if start_utc is None:
            errors.append("The start date is not a valid date and time.")
        start_field = iso(start_utc) if start_utc else ""
    duration = _number(form_str(form, "duration", 16)) or 0
    if not 0 < duration <= 24 * 366:
        errors.append("The duration is a number of hours above 0.")
    bin_name = form_str(form, "bin", 64).strip()
    if not re.match(r"^[A-Za-z0-9 ._-]*$", bin_name):
        errors.append("The bin name takes letters, digits, spaces, '.', '_' and '-'.")
    base = {"start": start_field, "duration_hours": duration, "bin": bin_name}
    refs = {r.id: r for r in h.refs()}
    requests: list[tuple[AgentRef, dict[str, Any], str]] = []  # (agent, body, what in words)
    if mode == "count":
        try:
            filters = parse_filters(form_str(form, "filters", 16384))
        except ValueError as exc:
            filters = []
            errors.append(f"Filters: {exc}.")
        count_value = _number(form_str(form, "count", 8)) or 0
        if not 1 <= count_value <= 1000 or not float(count_value).is_integer():
            errors.append("Ask for 1 to 1000 nodes.")
        if not errors and start_utc is not None:
            requests, short = await _plan_count(
                h,
                who,
                list(refs.values()),
                filters,
                int(count_value),
                start_utc,
                start_utc + dt.timedelta(hours=duration),
            )
            if short:
                outcome.refused.append(short)
    else:
        chosen: dict[int, list[str]] = {}
        for key in form_list(form, "node", 200)[:1000]:
            agent_id, _, name = key.partition("/")
            if not agent_id.isdigit() or not name or int(agent_id) not in refs:
                errors.append(f"Unknown node {key[:80]!r}.")
                continue
            chosen.setdefault(int(agent_id), []).append(name)
        if not chosen and not errors:
            errors.append("Pick nodes in the calendar (click their names) or ask for a number of nodes.")
        for aid, picked in chosen.items():
            unique = list(dict.fromkeys(picked))
            requests.append((refs[aid], {"filters": [{"nodes": unique}]}, ", ".join(unique)))
    if errors:
        return _result(request, Outcome(refused=errors), status=400)
    replies = await asyncio.gather(
        *(
            h.call(ref, "POST", "/api/reservations", who=who, json={**base, **body})
            for ref, body, _ in requests
        )
    )
    for (ref, _body, what), reply in zip(requests, replies, strict=True):
        if reply.ok:
            outcome.booked.extend(_booked(reply))
        else:
            outcome.refused.append(f"{what} on {ref.name}: not booked — {reply.error}")
    return _result(request, outcome, status=200 if outcome.booked or not outcome.refused else 409)


async def _plan_count(
    h: AgentHub,
    who: Identity,
    refs: list[AgentRef],
    filters: list[tuple[str, str, str]],
    count: int,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[list[tuple[AgentRef, dict[str, Any], str]], str]:
    """Spread `count` nodes matching the filters over the agents that have free ones."""
    params = {"start": iso(start), "end": iso(max(end, start + dt.timedelta(minutes=1)))}
    node_replies, sched_replies = await asyncio.gather(
        fetch_nodes(h, refs, who),
        h.fan_out(refs, lambda r: h.call(r, "GET", "/api/schedule", who=who, params=params)),
    )
    plan: list[tuple[AgentRef, dict[str, Any], str]] = []
    remaining = count
    described = " AND ".join(f"{p} {o} {v}" for p, o, v in filters) or "any node"
    notes: list[str] = []
    candidates: list[tuple[int, AgentRef, dict[str, Any]]] = []
    for nodes, sched in zip(node_replies, sched_replies, strict=True):
        if not nodes.ok or not isinstance(nodes.data, list):
            notes.append(nodes.words)
            continue
        busy = sched.data.get("nodes", {}) if sched.ok and isinstance(sched.data, dict) else {}
        rows = [
            Row(
                nodes.agent.id,
                nodes.agent.name,
                nodes.agent.node_type,
                str(n.get("name")),
                str(n.get("status", "")),
                n.get("properties") or {},
            )
            for n in nodes.data
            if isinstance(n, dict)
        ]
        match = [r for r in rows if r.status in ("available", "") and matches(r.filter_props, filters)]
        free_rows = [r for r in match if _free(r, busy, start, end)]
        if match:
            candidates.append((len(free_rows), nodes.agent, match[0].props))
    candidates.sort(key=lambda c: -c[0])
    for free_count, ref, sample in candidates:
        if remaining <= 0 or free_count <= 0:
            continue
        k = min(remaining, free_count)
        body = {"filters": [{"count": k, "properties": agent_properties(filters, sample)}]}
        plan.append((ref, body, f"{k} node(s) matching {described}"))
        remaining -= k
    short = ""
    if remaining > 0:
        short = (
            f"{remaining} of the {count} node(s) matching {described}: not booked — not enough free "
            f"nodes in that slot"
        )
        if notes:
            short += " (" + "; ".join(notes) + ")"
    return plan, short


def _result(request: Request, outcome: Outcome, status: int) -> Response:
    ctx = {"outcome": outcome, "page": "reserve"}
    if is_htmx(request):
        resp = render(request, "_booking_result.html", ctx, status=200)
        if outcome.booked:
            resp.headers["HX-Trigger"] = "calendar-refresh"  # the new bookings appear in the calendar
        return resp
    return render(request, "booking_result.html", ctx, status=status)
