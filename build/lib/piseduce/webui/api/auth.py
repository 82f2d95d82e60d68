"""Who calls the users' API: a personal access token (`Authorization: Bearer pst_…`) or the
browser's session (the pages' cookie, with the CSRF header on every state change, as the pages).

A token acts exactly as its user: the same `Identity` goes to the agents, so isolation, limits and
the agents' event logs are the same as for a page. A token never opens a page (the pages read only
the session). A wrong token is counted by the login limiter under the caller's address: a flood of
them is answered 429 with `Retry-After`, before any token is looked up.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, HTTPException, Request

from piseduce.webui import auth, tokens
from piseduce.webui.agents import Identity, user_identity
from piseduce.webui.models import User, utcnow
from piseduce.webui.throttle import Key, Limiter, Refusal

BEARER = {"WWW-Authenticate": "Bearer"}
BAD_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
TOKEN_RULE = "api-token"  # noqa: S105 - a limiter rule's name
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Caller:
    user: User
    via: Literal["token", "session"]
    can_write: bool
    token_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin


def _limiter(request: Request) -> Limiter:
    limiter: Limiter = request.app.state.limiter
    return limiter


def _source(request: Request) -> str:
    return str(request.app.state.client_addr.of(request))


def _too_many(wait: float, words: str) -> HTTPException:
    seconds = Refusal(wait, words).retry_after
    return HTTPException(
        429, f"Too many {words}. Wait {seconds} s and try again.", headers={"Retry-After": seconds}
    )


async def _by_token(request: Request, secret: str) -> Caller:
    db, limiter = request.app.state.database, _limiter(request)
    key = Key(TOKEN_RULE, _source(request))
    now = utcnow()
    # One read: is this address blocked, and whose token is it (every API call makes it).
    blocked, found = await db.read(
        lambda s: (limiter.waiting(s, [key], now), tokens.authenticate(s, secret, now))
    )
    if blocked is not None:
        raise _too_many(blocked.wait, blocked.words)
    if found is None:
        refusal = await db.write(lambda s: limiter.attempt(s, [key], now))
        if refusal is not None:
            raise _too_many(refusal.wait, refusal.words)
        raise HTTPException(
            401,
            "The API token is unknown, revoked or expired, or its account is not "
            "active: create a new one in Settings > API tokens.",
            headers=BAD_TOKEN,
        )
    if tokens.needs_touch(found.last_used, now):
        token_id = found.token_id
        await db.write(lambda s: tokens.touch(s, token_id, now))
    return Caller(found.user, "token", found.can_write, found.token_id)


async def _by_session(request: Request) -> Caller | None:
    uid = auth.session_user_id(request)
    if uid is None:
        return None
    user = await request.app.state.database.read(lambda s: auth.active_user(s, uid))
    if user is None:
        return None
    if request.method not in SAFE_METHODS:
        given = request.headers.get(auth.CSRF_HEADER, "")
        if not given or not hmac.compare_digest(auth.csrf_token(request), given):
            raise HTTPException(
                403,
                "A call with the browser's session needs the page's CSRF token in the "
                "X-CSRF-Token header (or use an API token: Authorization: Bearer).",
            )
    return Caller(user, "session", True)


async def caller(request: Request) -> Caller:
    """The API's caller; 401 (with `WWW-Authenticate: Bearer`) when nobody is signed in."""
    header = request.headers.get("authorization")
    found: Caller | None
    if header is not None:
        kind, _, secret = header.partition(" ")
        if kind.lower() != "bearer" or not secret.strip():
            raise HTTPException(401, "Send the token as 'Authorization: Bearer pst_…'.", headers=BEARER)
        found = await _by_token(request, secret.strip())
    else:
        found = await _by_session(request)
    if found is None:
        raise HTTPException(
            401,
            "Authenticate with 'Authorization: Bearer <token>' (create a token in Settings > API tokens).",
            headers=BEARER,
        )
    request.state.user = found.user
    return found


async def writer(request: Request, who: Caller = Depends(caller)) -> Caller:
    """A caller allowed to change things: a read-only token gets 403."""
    if not who.can_write:
        raise HTTPException(403, "This token is read-only: create a token with the 'write' scope to act.")
    return who


def identity_of(request: Request, who: Caller) -> Identity:
    return user_identity(who.user, request.app.state.fernet)
