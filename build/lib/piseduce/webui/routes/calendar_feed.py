"""The private calendar feed: `GET /calendar/<secret>.ics` (no login: the secret is the key; 404
for an unknown or revoked one, exactly like a wrong URL), and Settings > Calendar, where the URL is
made (shown once), regenerated (the old one stops working) or revoked."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.webui import audit, calendar_feed, ical
from piseduce.webui.agent_client import AgentClient, agents
from piseduce.webui.agents import Identity, user_identity
from piseduce.webui.models import User, utcnow
from piseduce.webui.web import current_user, database, flash, redirect, render

router = APIRouter()
log = logging.getLogger(__name__)
NOT_FOUND = "Not found: this calendar URL is unknown or was revoked (Settings > Calendar makes a new one)."


@router.get("/calendar/{name}")
async def feed(name: str, request: Request, h: AgentClient = Depends(agents)) -> Response:
    secret = name.removesuffix(".ics")
    now = utcnow()
    user = await database(request).write(lambda s: calendar_feed.user_of(s, secret, now))
    if not name.endswith(".ics") or user is None:
        return Response(NOT_FOUND, status_code=404, media_type="text/plain")
    base = user_identity(user, request.app.state.fernet)
    # Never an admin's view: a feed is its owner's own reservations, whatever their role.
    who = Identity(email=base.email, role="user", credentials=base.credentials)
    held, errors = await h.held(who, status="")
    if errors:  # a calendar app keeps the events it had: better than dropping an agent's
        log.info("calendar feed of %s: %s", user.email, "; ".join(errors))
        return Response(
            "An agent did not answer; try again shortly.",
            status_code=503,
            media_type="text/plain",
            headers={"Retry-After": "60"},
        )
    items = sorted(
        (calendar_feed.shown(x.agent, x.r) for x in held if x.r.owner == who.email),
        key=lambda it: (it.start, it.uid),
    )
    uid = user.id
    events = await database(request).write(lambda s: calendar_feed.events(s, uid, items, now))
    body = ical.calendar(f"PiSeduce: {user.email}", events, now)
    return Response(
        body,
        media_type="text/calendar; charset=utf-8",
        headers={"Cache-Control": "private, max-age=300", "X-Robots-Tag": "noindex"},
    )


async def page(request: Request, user: User, *, secret: str = "") -> Response:
    uid = user.id
    row = await database(request).read(lambda s: calendar_feed.feed_of(s, uid))
    base = str(request.base_url).rstrip("/")
    return render(
        request,
        "settings.html",
        {
            "tab": "calendar",
            "page": "settings",
            "keys": [],
            "entered": {},
            "feed": row,
            "feed_url": f"{base}/calendar/{secret}.ics" if secret else "",
        },
    )


@router.post("/settings/calendar")
async def regenerate(request: Request, user: User = Depends(current_user)) -> Response:
    uid, now = user.id, utcnow()
    secret = await database(request).write(audit.then(
        lambda s: calendar_feed.regenerate(s, uid, now), audit.who(request, user), "calendar.create",
        lambda _secret: (("user", uid), {})))  # never the secret itself
    return await page(request, user, secret=secret)


@router.post("/settings/calendar/revoke")
async def revoke(request: Request, user: User = Depends(current_user)) -> Response:
    uid = user.id
    done = await database(request).write(audit.then(
        lambda s: calendar_feed.revoke(s, uid), audit.who(request, user), "calendar.revoke",
        lambda revoked: (("user", uid), {}) if revoked else None))
    flash(
        request,
        "Calendar URL revoked: calendar apps get nothing from it any more."
        if done
        else "There was no calendar URL to revoke.",
        "ok" if done else "info",
    )
    return redirect(request, "/settings?tab=calendar")
