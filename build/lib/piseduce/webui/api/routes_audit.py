"""GET /api/v1/audit: the audit trail (webui/audit.py) for admins, as JSON lines, with the admin
page's filters (times without an offset are UTC). 403 for everyone else."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from piseduce.webui import audit
from piseduce.webui.api.auth import Caller, caller
from piseduce.webui.web import database

router = APIRouter(tags=["audit"])

LINE_SCHEMA = {
    "type": "string",
    "description": "One JSON object per line: {id, at, actor: {id, email}, source, action, "
    "target: {kind, id}, detail}",
}


@router.get(
    "/audit",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {"schema": LINE_SCHEMA}},
                     "description": "The events, oldest first, one JSON object per line"}},
)
async def audit_events(
    request: Request,
    who: Caller = Depends(caller),
    actor: Annotated[str, Query(max_length=254, description="a user id, or part of an email")] = "",
    action: Annotated[str, Query(max_length=70, description="an action, or a group such as user.*")] = "",
    target_kind: Annotated[str, Query(max_length=32)] = "",
    target_id: Annotated[str, Query(max_length=128)] = "",
    since: Annotated[str, Query(max_length=40, description="ISO 8601; without offset: UTC")] = "",
    until: Annotated[str, Query(max_length=40, description="ISO 8601; without offset: UTC")] = "",
) -> StreamingResponse:
    """Every audit event the filters select, streamed as JSON lines (admins only)."""
    if not who.is_admin:
        raise HTTPException(403, "The audit trail is for administrators.")
    params = {"actor": actor, "action": action, "target_kind": target_kind, "target_id": target_id,
              "since": since, "until": until}
    asked = audit.filters_from(params, dt.UTC)
    if isinstance(asked, str):
        raise HTTPException(422, asked)
    return StreamingResponse(audit.lines(database(request), asked), media_type="application/x-ndjson")
