"""(admin) Audit: the trail of who did what, when, from where (webui/audit.py), with filters, pages
of PAGE_SIZE events (newest first, keyset paging by event id) and the JSON-lines export of the
same filters, streamed. Read-only: no route here changes or deletes an event."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from piseduce.numbers import parse_int
from piseduce.webui import audit
from piseduce.webui.models import User
from piseduce.webui.web import admin_user, browser_zone, database, render

router = APIRouter(prefix="/admin/audit")
PAGE_SIZE = 50


def _entered(request: Request) -> dict[str, str]:
    return {k: request.query_params.get(k, "")[:300] for k in audit.FILTER_FIELDS}


@router.get("")
async def audit_page(request: Request, me: User = Depends(admin_user)) -> Response:
    entered = _entered(request)
    asked = audit.filters_from(entered, browser_zone(request))
    before_text = request.query_params.get("before", "")
    before: int | None = None
    error = asked if isinstance(asked, str) else ""
    if before_text and not error:
        try:
            before = parse_int(before_text[:20], lo=1, hi=2**62)
        except ValueError:
            error = "The page link is broken (before= is not an event number): start again from the newest."
    ctx = {"page": "admin_audit", "entered": entered, "actions": audit.ACTIONS, "events": [],
           "error": error, "query": urlencode({k: v for k, v in entered.items() if v}), "older": "",
           "paged": before is not None}
    if error or isinstance(asked, str):
        return render(request, "admin_audit.html", ctx, status=400)
    rows = await database(request).read(lambda s: audit.newest(s, asked, before=before, limit=PAGE_SIZE + 1))
    ctx["events"] = rows[:PAGE_SIZE]
    if len(rows) > PAGE_SIZE:
        last = rows[PAGE_SIZE - 1].id
        ctx["older"] = urlencode({**{k: v for k, v in entered.items() if v}, "before": last})
    return render(request, "admin_audit.html", ctx)


@router.get("/export")
async def export(request: Request, me: User = Depends(admin_user)) -> Response:
    """Every event the filters select, oldest first, one JSON object per line."""
    asked = audit.filters_from(_entered(request), browser_zone(request))
    if isinstance(asked, str):
        return Response(f"Export refused: {asked}\n", status_code=400, media_type="text/plain")
    return StreamingResponse(
        audit.lines(database(request), asked),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="piseduce-audit.jsonl"'},
    )
