"""Settings > API tokens: create a personal access token (shown once), list and revoke them.

The new secret is rendered in the answer to the creating POST itself, never stored (not even in
the session's flash messages, which live in the database) nor put in a redirect's URL: reloading
that page does not show it again. Everything else follows the pages' rules (CSRF, one
transaction in the database's threads).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from piseduce.numbers import StrictInt, parse_int
from piseduce.webui import audit, tokens
from piseduce.webui.models import User, utcnow
from piseduce.webui.web import current_user, database, flash, form_str, redirect, render

router = APIRouter(prefix="/settings/tokens")


async def page(
    request: Request, user: User, *, new: tokens.NewToken | None = None, error: str = "",
    entered: dict[str, str] | None = None, status: int = 200,
) -> Response:
    uid = user.id
    rows = await database(request).read(lambda s: tokens.listed(s, uid))
    base = str(request.base_url).rstrip("/")
    return render(request, "settings.html", {
        "tab": "tokens", "page": "settings", "keys": [], "entered": {"error": error, **(entered or {})},
        "tokens": rows, "new_token": new, "now": utcnow(), "base_url": base, "max_days": tokens.MAX_DAYS,
    }, status=status)


@router.post("")
async def create(request: Request, user: User = Depends(current_user)) -> Response:
    form = await request.form()
    name = form_str(form, "name", 65).strip()
    scope = form_str(form, "scope", 8)
    days_text = form_str(form, "days", 16).strip()
    entered = {"name": name[:64], "scope": scope, "days": days_text}
    days: int | None = None
    if days_text:
        try:
            days = parse_int(days_text, lo=1, hi=tokens.MAX_DAYS)
        except ValueError as exc:
            error = f"Expiry (days): {exc}, or empty for none."
            return await page(request, user, error=error, entered=entered, status=400)
    problem = tokens.check_request(name, scope, days)
    if problem:
        return await page(request, user, error=problem, entered=entered, status=400)
    uid = user.id
    made = await database(request).write(audit.then(
        lambda s: tokens.create(s, uid, name, scope, days, utcnow()), audit.who(request, user),
        "token.create",
        lambda m: None if isinstance(m, str) else (("token", m.id), {"name": m.name, "scope": m.scope})))
    if isinstance(made, str):
        return await page(request, user, error=made, entered=entered, status=400)
    return await page(request, user, new=made)


@router.post("/{token_id}/revoke")
async def revoke(token_id: StrictInt, request: Request, user: User = Depends(current_user)) -> Response:
    uid = user.id
    row = await database(request).write(audit.then(
        lambda s: tokens.revoke(s, uid, token_id, utcnow()), audit.who(request, user), "token.revoke",
        lambda r: None if r is None else (("token", r.id), {"name": r.name})))
    if row is None:
        flash(request, "No such token (revoked already?).", "error")
    else:
        flash(request, f"Token {row.name!r} revoked: it no longer works, from the next request on.", "ok")
    return redirect(request, "/settings?tab=tokens")
