"""Server-side sessions: the cookie holds a random id, the database a row keyed by its SHA-256.

A session ends the moment its row is deleted: at logout, when its user's password changes, when
an admin revokes the account or changes its role, and 12 h after the login whatever happens. A
copy of the cookie taken before any of these is worth nothing after it, and a copy of the
database logs nobody in (it holds hashes of the ids only).

Anonymous visitors cost no write: their cookie holds a random id with no row, to which their CSRF
token is tied (`auth.csrf_token`); a row is made for them only to carry a message to the next page
(after a sign-up or a logout), and it expires within the hour. Logging in always gives a new id
(no session fixation).

`ServerSessions` is pure ASGI middleware: it loads the row before the application runs (in the
database's thread pool, like every database call of the web UI) and stores what changed before
the answer's headers leave, so the next request of the browser finds it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from piseduce.dbtypes import utcnow
from piseduce.webui.database import Database
from piseduce.webui.models import WebSession

COOKIE = "piseduce_session"
SESSION_MAX_AGE = 12 * 3600
ANONYMOUS_MAX_AGE = 3600
STATE_KEY = "piseduce.session"
ID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
# Paths served without a session: nothing there needs one, and they must never wait on the database.
EXEMPT = ("/static/", "/healthz", "/favicon.ico")


def new_id() -> str:
    return secrets.token_urlsafe(32)


def id_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class SessionState:
    """The request's session: what the row held, and what the request asks to change."""

    raw_id: str | None = None  # the cookie's id; None until one is needed
    user_id: int | None = None
    stored: bool = False  # a row exists for raw_id
    data: dict[str, Any] = field(default_factory=dict)  # also scope["session"]
    loaded: dict[str, Any] = field(default_factory=dict)
    login_user: int | None = None  # set by `login`: a new id, a new row for this user
    ended: bool = False  # set by `end`: the row goes
    new_cookie: bool = False

    def ensure_id(self) -> str:
        if self.raw_id is None:
            self.raw_id = new_id()
            self.new_cookie = True
        return self.raw_id

    def login(self, user_id: int) -> None:
        self.login_user = user_id
        self.ended = False
        self.data.clear()

    def end(self) -> None:
        self.login_user = None
        self.ended = True
        self.data.clear()


def state_of(conn: HTTPConnection) -> SessionState:
    state = conn.scope.get(STATE_KEY)
    if not isinstance(state, SessionState):  # a path without sessions (EXEMPT)
        state = SessionState()
        conn.scope[STATE_KEY] = state
        conn.scope["session"] = state.data
    return state


# ---------------------------------------------------------------- rows (run in Database threads)


def load(s: Session, raw: str, now: dt.datetime) -> tuple[int | None, dict[str, Any]] | None:
    row = s.get(WebSession, id_hash(raw))
    if row is None or row.expires_at <= now:
        return None
    return row.user_id, dict(row.data or {})


def end_user_sessions(s: Session, user_id: int, *, keep: str | None = None) -> int:
    """Delete every session of `user_id` (but the one whose id is `keep`); how many ended."""
    query = delete(WebSession).where(WebSession.user_id == user_id)
    if keep is not None:
        query = query.where(WebSession.id_hash != id_hash(keep))
    return int(s.execute(query).rowcount or 0)  # type: ignore[attr-defined]


def _add(s: Session, raw: str, user_id: int | None, data: dict[str, Any], now: dt.datetime) -> None:
    seconds = SESSION_MAX_AGE if user_id is not None else ANONYMOUS_MAX_AGE
    s.add(WebSession(id_hash=id_hash(raw), user_id=user_id, data=data,
                     expires_at=now + dt.timedelta(seconds=seconds)))


def _put_anonymous(s: Session, raw: str, data: dict[str, Any], now: dt.datetime) -> None:
    """The visitor's row, created or replaced in one statement (insert-or-update): the same
    browser's requests run at once (a double click, a script) and each found no row when it
    began; a row of that id may also be there expired (the cookie outlives it). A live row of
    a logged-in user is never touched (its ids are fresh at every login: this is defence)."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(WebSession).values(
        id_hash=id_hash(raw), user_id=None, data=data, created_at=now,
        expires_at=now + dt.timedelta(seconds=ANONYMOUS_MAX_AGE),
    )
    s.execute(stmt.on_conflict_do_update(
        index_elements=["id_hash"],
        set_={"user_id": None, "data": stmt.excluded.data, "created_at": stmt.excluded.created_at,
              "expires_at": stmt.excluded.expires_at},
        where=WebSession.user_id.is_(None) | (WebSession.expires_at <= now),
    ))


def _store(s: Session, state: SessionState, now: dt.datetime) -> str | None:
    """Write what the request changed; the id the cookie must hold now (None: leave the cookie)."""
    if state.login_user is not None or state.ended:
        # A new id at every login and logout; the old row goes, and so do the expired ones.
        if state.raw_id is not None:
            s.execute(delete(WebSession).where(WebSession.id_hash == id_hash(state.raw_id)))
        purge_expired(s, now)
        raw = new_id()
        if state.login_user is not None or state.data:
            _add(s, raw, state.login_user, state.data, now)
        return raw
    raw = state.ensure_id()
    if state.stored:
        # One UPDATE, not the ORM's read-then-write: a row deleted meanwhile (a logout in another
        # tab) leaves nothing to update, rather than a StaleDataError.
        s.execute(update(WebSession).where(WebSession.id_hash == id_hash(raw), WebSession.expires_at > now)
                  .values(data=state.data))
    elif state.data:
        _put_anonymous(s, raw, state.data, now)
    return raw if state.new_cookie else None


def purge_expired(s: Session, now: dt.datetime) -> int:
    result = s.execute(delete(WebSession).where(WebSession.expires_at <= now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- middleware


def _cookie_value(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            raw = cookie_parser(value.decode("latin-1")).get(COOKIE, "")
            if ID_RE.match(raw):
                return raw
    return None


class ServerSessions:
    def __init__(self, app: ASGIApp, *, db: Database, secure: bool, exempt: Sequence[str] = EXEMPT) -> None:
        self.app = app
        self.db = db
        self.secure = secure
        self.exempt = tuple(exempt)

    def _set_cookie(self, raw: str, max_age: int) -> bytes:
        parts = [f"{COOKIE}={raw}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        state = SessionState(raw_id=_cookie_value(scope))
        if state.raw_id is not None:
            raw = state.raw_id
            found = await self.db.read(lambda s: load(s, raw, utcnow()))
            if found is not None:
                state.stored = True
                state.user_id, state.data = found
                state.loaded = dict(found[1])
        scope[STATE_KEY] = state
        scope["session"] = state.data

        async def send_stored(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = await self._persist(state)
                if cookie is not None:
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, send_stored)

    async def _persist(self, state: SessionState) -> bytes | None:
        """Store what changed; the Set-Cookie header to send, if the id is new. The cookie lives as
        long as a login session, even a visitor's: their CSRF token is tied to it."""
        changed = state.data != state.loaded
        if state.login_user is None and not state.ended and not changed:
            raw = state.raw_id if state.new_cookie else None
        else:
            raw = await self.db.write(lambda s: _store(s, state, utcnow()))
        return None if raw is None else self._set_cookie(raw, SESSION_MAX_AGE)

