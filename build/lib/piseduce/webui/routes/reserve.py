"""Reserve: the node x time calendar of every agent, property filters, and booking."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from piseduce.dbtypes import to_utc
from piseduce.numbers import StrictInt, read_int
from piseduce.protocol import BusySlot, Node, Schedule
from piseduce.webui import booking
from piseduce.webui.agent_client import AgentClient, Result, agents
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.api.schemas import MIN_HOURS
from piseduce.webui.booking import BookingRequest, start_problem
from piseduce.webui.booking_outcome import Outcome
from piseduce.webui.form_values import form_decimal, form_int, form_text
from piseduce.webui.models import User
from piseduce.webui.node_filters import PSEUDO, Filter, matches, parse_chips
from piseduce.webui.repeats import repeated_node
from piseduce.webui.web import (
    browser_zone,
    current_user,
    form_list,
    form_str,
    identity,
    is_htmx,
    local_text,
    render,
)

router = APIRouter()

MAX_DAYS = 7
PAGE_ROWS = 100
MAX_FILTERS_TEXT = 16384
# The days the agents' calendars cover (see _day); the "Go to date" field refuses the others.
FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(2199, 12, 31)


@dataclass
class Row:
    agent_id: int
    agent: str
    node_type: str
    name: str
    status: str
    props: dict[str, Any]
    busy: list[dict[str, Any]] = field(default_factory=list)
    slots: list[BusySlot] = field(default_factory=list)  # its agent's, drawn only if on the page

    @property
    def key(self) -> str:
        return f"{self.agent_id}/{self.name}"

    @property
    def dom_id(self) -> str:
        """A stable HTML id for this node's controls (a node name may hold any character)."""
        safe = re.sub(r"[^A-Za-z0-9_-]", lambda m: f".{ord(m.group(0)):x}.", self.name)
        return f"{self.agent_id}-{safe}"

    @property
    def filter_props(self) -> dict[str, Any]:
        return {**self.props, "agent": self.agent, "type": self.node_type}


@dataclass
class Calendar:
    start: dt.datetime
    end: dt.datetime
    zone: ZoneInfo
    rows: list[Row]  # the page's rows only
    errors: list[str]
    hours: list[dict[str, Any]]
    days: list[dict[str, Any]]
    now_left: float | None
    view: View
    total: int = 0  # every agent's nodes
    matching: int = 0  # those matching the filters
    prop_values: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return max(1, -(-self.matching // self.view.size))

    @property
    def first(self) -> int:
        """The 0-based index of the page's first row among the matching ones."""
        return (self.view.page - 1) * self.view.size


@dataclass(frozen=True)
class View:
    """Which rows of the calendar a page shows: the filters' matches, one page of them. A site's
    every node on one page made a page grow with nodes x hours (2 MB at 3000 nodes), most of it
    never on screen; a page is PAGE_ROWS rows, whatever the site's size."""

    filters: list[Filter]
    filters_text: str  # as the browser sent it (echoed, so that it knows which filters are applied)
    page: int = 1
    size: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            object.__setattr__(self, "size", PAGE_ROWS)


def _day(text: str | None, zone: ZoneInfo) -> dt.date:
    today = dt.datetime.now(zone).date()
    if not text:
        return today
    try:
        day = dt.date.fromisoformat(text[:10])
    except ValueError:
        return today
    # The agents' calendars cover 2000-2200; beyond, dt.date arithmetic overflows near year 1 or 9999.
    return day if FIRST_DAY <= day <= LAST_DAY else today


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
    return local_text(t, zone)


async def fetch_nodes(
    h: AgentClient, refs: list[AgentRef], who: Identity, start: dt.datetime, end: dt.datetime
) -> list[tuple[Result[list[Node]], Result[Schedule]]]:
    """Every agent's nodes and its calendar from `start` to `end`, asked all at once."""
    nodes, schedules = await asyncio.gather(
        h.fan_out(refs, lambda r: h.nodes(r, who)),
        h.fan_out(refs, lambda r: h.schedule(r, who, start, end)),
    )
    return list(zip(nodes, schedules, strict=True))


async def fetch_calendar(
    h: AgentClient, who: Identity, day: dt.date, days: int, zone: ZoneInfo, view: View
) -> Calendar:
    start, end = _window(day, days, zone)
    answers = await fetch_nodes(h, await h.refs(), who, start, end)
    # Thousands of nodes take a while to lay out: in a thread, off the event loop.
    return await anyio.to_thread.run_sync(_lay_out, answers, start, end, day, days, zone, view)


@dataclass(frozen=True)
class AgentRows:
    """One agent's nodes as calendar rows in natural order, and their filterable property values:
    derived from its node list once and kept beside it while the list stays the same bytes
    (Result.derived), as rebuilding and sorting 5000 rows was a third of a page's CPU at 50
    agents. Shared by every page: never changed (a page's own rows are copies, see _page_rows)."""

    rows: list[Row]
    props: dict[str, set[str]]


def _agent_rows(nodes: Result[list[Node]]) -> AgentRows:
    ref = nodes.agent
    key = ("reserve rows", ref.id, ref.name, ref.node_type)
    kept = nodes.derived.get(key) if nodes.derived is not None else None
    if isinstance(kept, AgentRows):
        return kept
    rows = [Row(ref.id, ref.name, ref.node_type, n.name, n.status, n.properties) for n in nodes.value or []]
    rows.sort(key=lambda r: _natural(r.name))
    props: dict[str, set[str]] = {}
    for row in rows:
        for k, v in row.props.items():
            if k not in PSEUDO and isinstance(v, str | int | float | bool):
                props.setdefault(k, set()).add(str(v))
    made = AgentRows(rows, props)
    if nodes.derived is not None:
        nodes.derived[key] = made
    return made


def _rows(
    answers: list[tuple[Result[list[Node]], Result[Schedule]]],
) -> tuple[list[Row], dict[str, set[str]], dict[int, dict[str, list[BusySlot]]], list[str]]:
    """Every agent's nodes as rows sorted by agent and name (shared: never changed), their
    property values, each agent's busy slots by node, and the failed agents in words."""
    groups: list[AgentRows] = []
    props: dict[str, set[str]] = {"agent": set(), "type": set()}
    busy: dict[int, dict[str, list[BusySlot]]] = {}
    errors: list[str] = []
    for nodes, sched in answers:
        ref = nodes.agent
        if nodes.value is None:
            errors.append(nodes.words)
            continue
        if sched.value is not None:
            busy[ref.id] = sched.value.nodes
        else:
            errors.append(f"{ref.name}: calendar unavailable ({sched.error})")
        group = _agent_rows(nodes)
        groups.append(group)
        if group.rows:  # the pseudo-properties of the nodes shown, as filter_props has them
            props["agent"].add(ref.name)
            props["type"].add(ref.node_type)
        for k, values in group.props.items():
            props.setdefault(k, set()).update(values)
    groups.sort(key=lambda g: g.rows[0].agent if g.rows else "")
    every = [row for g in groups for row in g.rows]
    if len({g.rows[0].agent for g in groups if g.rows}) < sum(1 for g in groups if g.rows):
        every.sort(key=lambda r: (r.agent, _natural(r.name)))  # two agents of one name: interleaved
    return every, props, busy, errors


def _draw_busy(row: Row, start: dt.datetime, end: dt.datetime, zone: ZoneInfo) -> None:
    span = (end - start).total_seconds()
    for slot in row.slots:
        s, e = to_utc(slot.start), to_utc(slot.end)
        if e <= start or s >= end:
            continue
        s, e = max(s, start), min(e, end)
        who_text = "yours" if slot.mine else (slot.owner or slot.reason or "busy")
        row.busy.append(
            {
                "left": round((s - start).total_seconds() / span * 100, 3),
                "width": max(0.3, round((e - s).total_seconds() / span * 100, 3)),
                "mine": slot.mine,
                "title": f"{who_text}: {_fmt(s, zone)} – {_fmt(e, zone)}",
            }
        )


def _prop_values(props: dict[str, set[str]]) -> dict[str, list[str]]:
    """What the filter fields suggest: every property of every node (not only the page's)."""
    return {k: sorted(v)[:200] for k, v in sorted(props.items()) if v}


def _page_rows(shown: list[Row], busy: dict[int, dict[str, list[BusySlot]]], first: int, size: int,
               start: dt.datetime, end: dt.datetime, zone: ZoneInfo) -> list[Row]:
    """The page's rows, as copies of their own to draw their busy slots on."""
    rows = []
    for shared in shown[first:first + size]:
        row = dataclasses.replace(shared, busy=[], slots=busy.get(shared.agent_id, {}).get(shared.name, []))
        _draw_busy(row, start, end, zone)
        rows.append(row)
    return rows


def _lay_out(
    answers: list[tuple[Result[list[Node]], Result[Schedule]]],
    start: dt.datetime,
    end: dt.datetime,
    day: dt.date,
    days: int,
    zone: ZoneInfo,
    view: View,
) -> Calendar:
    span = (end - start).total_seconds()
    every, props, busy, errors = _rows(answers)
    shown = [r for r in every if matches(r.filter_props, view.filters)] if view.filters else every
    pages = max(1, -(-len(shown) // view.size))
    if view.page > pages:  # the site shrank, or the filters narrowed it: its last page
        view = View(view.filters, view.filters_text, pages, view.size)
    first = (view.page - 1) * view.size
    rows = _page_rows(shown, busy, first, view.size, start, end, zone)
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
    return Calendar(start, end, zone, rows, errors, hours, day_heads, now_left, view, total=len(every),
                    matching=len(shown), prop_values=_prop_values(props))


def _natural(name: str) -> list[Any]:
    # Odd items are the captured runs of ASCII digits ("²" is a digit to isdigit(), not to int()).
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"([0-9]+)", name))]


def _calendar_context(cal: Calendar, day: dt.date, days: int) -> dict[str, Any]:
    view = cal.view
    return {
        "cal": cal,
        "day": day.isoformat(),
        "days": days,
        "prev_day": (day - dt.timedelta(days=1)).isoformat(),
        "next_day": (day + dt.timedelta(days=1)).isoformat(),
        "today": dt.datetime.now(cal.zone).date().isoformat(),
        "min_day": FIRST_DAY.isoformat(),
        "max_day": LAST_DAY.isoformat(),
        "prop_values": cal.prop_values,
        "cal_page": view.page,
        "pages": cal.pages,
        "first_row": cal.first + 1 if cal.rows else 0,
        "last_row": cal.first + len(cal.rows),
    }


def _view(filters: str, page: int) -> tuple[View, str | None]:
    """The rows asked for, and what was wrong with the filters (then none apply) in words."""
    text = filters[:MAX_FILTERS_TEXT]
    try:
        parsed = parse_chips(text) if text.strip() else []
    except ValueError as exc:
        return View([], text, max(page, 1)), f"Filters: {exc}."
    return View(parsed, text, max(page, 1)), None


async def _calendar_for(
    request: Request, user: User, h: AgentClient, day: str | None, days: int, filters: str, page: int
) -> dict[str, Any]:
    """The calendar of `days` days from `day` (today by default) in the browser's time zone: the
    nodes matching `filters` (the Reserve page's chips, JSON), `page` of them."""
    zone = browser_zone(request)
    d = _day(day, zone)
    days = min(max(days, 1), MAX_DAYS)
    view, problem = _view(filters, page)
    cal = await fetch_calendar(h, identity(request, user), d, days, zone, view)
    if problem:
        cal.errors.insert(0, problem)
    return await anyio.to_thread.run_sync(_calendar_context, cal, d, days)


@router.get("/reserve")
async def reserve_page(
    request: Request,
    day: str | None = None,
    days: StrictInt = 2,
    filters: str = "",
    page: StrictInt = 1,
    user: User = Depends(current_user),
    h: AgentClient = Depends(agents),
) -> Response:
    context = await _calendar_for(request, user, h, day, days, filters, page)
    return render(request, "reserve.html", {"page": "reserve", **context})


@router.get("/reserve/calendar")
async def calendar_fragment(
    request: Request,
    day: str | None = None,
    days: StrictInt = 2,
    filters: str = "",
    page: StrictInt = 1,
    user: User = Depends(current_user),
    h: AgentClient = Depends(agents),
) -> Response:
    return render(request, "_calendar.html", await _calendar_for(request, user, h, day, days, filters, page))


# ---------------------------------------------------------------- booking


def _request_of(form: FormData, refs: dict[int, AgentRef]) -> tuple[BookingRequest | None, list[str]]:
    """The booking the Reserve form asks for (booking.py books it), or the form's errors in words."""
    errors: list[str] = []
    # After "Find next free slot", the answer itself travels (app.js drops it when the form changes):
    # Reserve books the answered nodes by name at the answered start, not a new count.
    answered = form_list(form, "answer", 200)[:1000]
    start_text = form_str(form, "answer_start" if answered else "start", 64)
    if answered:
        now = form_str(form, "answer_now", 8) == "1"
    else:
        now = form_str(form, "when", 8) != "later" or not start_text
    start_utc = dt.datetime.now(dt.UTC) if now else _parse_time(start_text)
    if start_utc is None:
        errors.append("The start date is not a valid date and time.")
    elif problem := start_problem(start_utc):
        errors.append(problem)
    duration = 0.0
    try:
        duration = form_decimal(form, "duration", "The duration (hours)", lo=0, hi=24 * 366)
    except ValueError as exc:
        errors.append(str(exc))
    else:
        if duration < MIN_HOURS:
            errors.append(f"The duration is a number of hours of at least {MIN_HOURS} (36 s), e.g. 3.")
    bin_name = ""
    try:
        bin_name = form_text(form, "bin", 64, "The bin name").strip()
    except ValueError as exc:
        errors.append(str(exc))
    if not re.match(r"^[A-Za-z0-9 ._-]*$", bin_name):
        errors.append("The bin name takes letters, digits, spaces, '.', '_' and '-'.")
    req = BookingRequest(start_utc or dt.datetime.now(dt.UTC), now, duration, bin_name)
    if form_str(form, "mode", 16) == "count" and not answered:
        try:
            req.filters = parse_chips(form_str(form, "filters", 16384))
        except ValueError as exc:
            errors.append(f"Filters: {exc}.")
        try:
            req.count = form_int(form, "count", "The number of nodes", lo=1, hi=1000)
        except ValueError as exc:
            errors.append(str(exc))
    else:
        for key in answered or form_list(form, "node", 200)[:1000]:
            agent_text, _, name = key.partition("/")
            agent_id = read_int(agent_text, lo=1)
            if agent_id is None or not name or agent_id not in refs:
                errors.append(f"Unknown node {key[:80]!r}.")
                continue
            req.nodes.setdefault(agent_id, []).append(name)
        if problem := repeated_node(req.nodes, refs):
            errors.append(problem)
        if not req.nodes and not errors:
            errors.append("Pick nodes in the calendar (click their names) or ask for a number of nodes.")
    return (None if errors else req), errors


@router.post("/reserve")
async def book(
    request: Request, user: User = Depends(current_user), h: AgentClient = Depends(agents)
) -> Response:
    form = await request.form()
    req, errors = _request_of(form, {r.id: r for r in await h.refs()})
    if req is None:
        return _result(request, Outcome(refused=errors), status=400)
    outcome = await booking.book(h, identity(request, user), req)
    return _result(request, outcome, status=200 if outcome.booked or not outcome.refused else 409)


def _result(request: Request, outcome: Outcome, status: int) -> Response:
    ctx = {"outcome": outcome, "page": "reserve"}
    if is_htmx(request):
        resp = render(request, "_booking_result.html", ctx, status=200)
        if outcome.booked:
            resp.headers["HX-Trigger"] = "calendar-refresh"  # the new bookings appear in the calendar
        return resp
    return render(request, "booking_result.html", ctx, status=status)
