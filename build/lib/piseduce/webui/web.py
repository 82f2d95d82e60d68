"""Page plumbing shared by the routes: templates, flash messages, the request's user and database."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Template, pass_context
from markupsafe import Markup, escape
from starlette.datastructures import FormData
from starlette.types import Receive, Scope, Send

from piseduce import numbers
from piseduce.dbtypes import to_utc
from piseduce.webui import auth
from piseduce.webui.agents import AgentHub, Identity, user_identity
from piseduce.webui.database import Database
from piseduce.webui.models import User

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _utc_iso(value: dt.datetime | str | float | None) -> str:
    """ISO 8601 in UTC ("…Z") of a datetime, an ISO string or seconds since the epoch (as agents
    send a detection's start); "" for nothing or garbage."""
    if value is None or value == "" or isinstance(value, bool):
        return ""
    try:
        if isinstance(value, int | float):
            return _utc_iso(dt.datetime.fromtimestamp(value, dt.UTC))
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return to_utc(value).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return ""


def _zone(name: Any) -> ZoneInfo:
    try:
        return ZoneInfo(str(name or "UTC")[:64])
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_text(t: dt.datetime, zone: ZoneInfo) -> str:
    """A time in the viewer's zone, written as the pages write theirs (static/app.js, en-US):
    'Tue, Dec 01, 04:14 PM'."""
    return t.astimezone(zone).strftime("%a, %b %d, %I:%M %p")


# The UTC times agents write in their messages ("2025-03-02 14:00 UTC", or ISO-8601 with Z or
# +00:00). Every one of them is shown in the viewer's zone instead (see `_finalize`).
UTC_TIME_RE = re.compile(
    r"\b(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2})(?::(\d{2})(?:\.\d+)?)?(?: ?UTC\b|Z\b|\+00:00)"
)


def localize_times(text: str, zone: ZoneInfo) -> str:
    """`text` with every UTC time in it written in `zone`."""

    def one(m: re.Match[str]) -> str:
        try:
            t = dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}:{m.group(3) or '00'}+00:00")
        except ValueError:
            return m.group(0)
        return local_text(t, zone)

    return UTC_TIME_RE.sub(one, text)


@pass_context
def _finalize(ctx: Any, value: Any) -> Any:
    """Every plain string a template prints (flash messages, agents' refusals and events, node
    errors...) has its UTC times rewritten in the viewer's zone: no page mixes UTC and local time.
    Markup (built by filters such as `time`) is left alone."""
    if type(value) is str and UTC_TIME_RE.search(value):
        return localize_times(value, _zone(ctx.get("tz")))
    return value


@pass_context
def _time_tag(ctx: Any, value: dt.datetime | str | float | None, style: str = "datetime") -> Markup:
    """A <time> in the viewer's zone; static/app.js re-formats it with the browser's own zone and
    locale (the first page of a session is rendered before the browser named its zone)."""
    iso = _utc_iso(value)
    if not iso:
        return Markup("")
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    zone = _zone(ctx.get("tz"))
    text = t.astimezone(zone).strftime("%I:%M:%S %p") if style == "time" else local_text(t, zone)
    return Markup('<time class="t" data-utc="{}" data-style="{}">{}</time>').format(iso, style, text)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.autoescape = True  # every template, whatever its extension
    env.finalize = _finalize
    env.filters["utc"] = _utc_iso
    env.filters["time"] = _time_tag
    # JSON for an attribute, escaped here: Markup, so that `_finalize` never rewrites data.
    env.filters["tojson_attr"] = lambda v: escape(json.dumps(v, separators=(",", ":"), default=str))
    return templates


def database(request: Request) -> Database:
    db: Database = request.app.state.database
    return db


def hub(request: Request) -> AgentHub:
    h: AgentHub = request.app.state.hub
    return h


async def _session_user(request: Request) -> User | None:
    uid = auth.session_user_id(request)
    if uid is None:
        return None
    return await database(request).read(lambda s: auth.active_user(s, uid))


async def optional_user(request: Request) -> User | None:
    return await _session_user(request)


async def current_user(request: Request) -> User:
    user = await _session_user(request)
    if user is None:
        raise auth.LoginRequired()
    request.state.user = user
    return user


async def admin_user(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise auth.AdminRequired()
    return user


def identity(request: Request, user: User) -> Identity:
    return user_identity(user, request.app.state.fernet)


# Flash messages live in the session's row: at most FLASH_KEEP of them, each cut at FLASH_CHARS
# (an agent's refusal can be long; the page shows the start of it, never the whole of any text).
FLASH_KEEP = 8
FLASH_CHARS = 600


def flash(request: Request, message: str, kind: str = "info") -> None:
    text = message if len(message) <= FLASH_CHARS else message[: FLASH_CHARS - 1] + "…"
    msgs = list(request.session.get("flash", []))[-(FLASH_KEEP - 1):]
    msgs.append([kind[:16], text])
    request.session["flash"] = msgs


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def browser_zone(request: Request) -> ZoneInfo:
    """The browser's time zone (static.js sends it as a header and a cookie); UTC when unknown."""
    name = request.headers.get("x-timezone") or request.cookies.get("tz") or "UTC"
    try:
        return ZoneInfo(name[:64])
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


class PageResponse(HTMLResponse):
    """A page whose template is rendered in a thread as it is sent: a page of thousands of rows
    (a big site's calendar) costs a thread its CPU, not the event loop, which keeps answering
    every other request meanwhile."""

    def __init__(self, template: Template, context: dict[str, Any], status_code: int) -> None:
        self.template = template
        self.context = context
        super().__init__(content=b"", status_code=status_code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.body = (await anyio.to_thread.run_sync(self.template.render, self.context)).encode()
        length = (b"content-length", str(len(self.body)).encode())
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"] + [length]
        await super().__call__(scope, receive, send)


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    ctx: dict[str, Any] = dict(context or {})
    ctx.setdefault("user", getattr(request.state, "user", None))
    ctx["csrf"] = auth.csrf_token(request)
    ctx["flashes"] = request.session.pop("flash", []) if not name.startswith("_") else []
    ctx["tz"] = browser_zone(request).key
    ctx["request"] = request
    templates: Jinja2Templates = request.app.state.templates
    return PageResponse(templates.get_template(name), ctx, status)


def redirect(request: Request, url: str) -> Response:
    """After a POST: a 303 for a form, an HX-Redirect for htmx."""
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def form_str(form: FormData, name: str, limit: int = 1024) -> str:
    """A text field of a submitted form, cut at `limit` characters; '' when absent."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def form_list(form: FormData, name: str, limit: int = 1024) -> list[str]:
    return [v[:limit] for v in form.getlist(name) if isinstance(v, str)]


def parse_number(text: str) -> int | float:
    """A number typed in a form (an int when whole). ValueError, in words, for anything else:
    float() also reads "nan", "inf" and "1e999", which JSON cannot carry to an agent, and "1_0" as
    10 (piseduce.numbers reads strictly; spaces around it are dropped, a line break is refused)."""
    return numbers.parse_number(text, hand_typed=True)
