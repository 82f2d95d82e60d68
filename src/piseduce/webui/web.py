"""Page plumbing shared by the routes: templates, flash messages, the request's user and database."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from piseduce.dbtypes import to_utc
from piseduce.webui import auth
from piseduce.webui.agents import AgentHub, Identity, user_identity
from piseduce.webui.models import User

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _utc_iso(value: dt.datetime | str | None) -> str:
    if value is None or value == "":
        return ""
    try:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return to_utc(value).isoformat().replace("+00:00", "Z")
    except ValueError:
        return ""


def _time_tag(value: dt.datetime | str | None, style: str = "datetime") -> Markup:
    """A <time> the browser re-formats in its own time zone (static.js); UTC text as fallback."""
    iso = _utc_iso(value)
    if not iso:
        return Markup("")
    text = iso.replace("T", " ")[:16] + " UTC"
    return Markup('<time class="t" data-utc="{}" data-style="{}">{}</time>').format(iso, style, text)


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    env = templates.env
    env.autoescape = True  # every template, whatever its extension
    env.filters["utc"] = _utc_iso
    env.filters["time"] = _time_tag
    env.filters["tojson_attr"] = lambda v: json.dumps(v, separators=(",", ":"), default=str)
    return templates


def db_session(request: Request) -> Iterator[Session]:
    with request.app.state.db() as db:
        yield db


def hub(request: Request) -> AgentHub:
    h: AgentHub = request.app.state.hub
    return h


def begin_write(db: Session) -> None:
    """Start the request's write transaction now, taking SQLite's write lock at once: a read
    transaction upgraded to a write fails at once (no busy wait) when another process wrote in
    between, so every writing handler calls this before reading what it changes."""
    if db.in_transaction():
        db.commit()
    if db.get_bind().dialect.name == "sqlite":
        db.connection(execution_options={"sqlite_begin": "IMMEDIATE"})


def optional_user(request: Request, db: Session = Depends(db_session)) -> User | None:
    user = auth.session_user(request, db)
    db.commit()  # end the read transaction: pages then wait on agents without holding one
    return user


def current_user(request: Request, db: Session = Depends(db_session)) -> User:
    user = auth.session_user(request, db)
    db.commit()
    if user is None:
        raise auth.LoginRequired()
    request.state.user = user
    return user


def admin_user(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise auth.AdminRequired()
    return user


def identity(request: Request, user: User) -> Identity:
    return user_identity(user, request.app.state.fernet)


def flash(request: Request, message: str, kind: str = "info") -> None:
    msgs = list(request.session.get("flash", []))[-9:]
    msgs.append([kind, message])
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


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    ctx: dict[str, Any] = dict(context or {})
    ctx.setdefault("user", getattr(request.state, "user", None))
    ctx["csrf"] = auth.csrf_token(request)
    ctx["flashes"] = request.session.pop("flash", []) if not name.startswith("_") else []
    ctx["tz"] = browser_zone(request).key
    resp: HTMLResponse = request.app.state.templates.TemplateResponse(request, name, ctx, status_code=status)
    return resp


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
