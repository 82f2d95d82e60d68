"""Accounts and sessions: who is asking, CSRF tokens, login rate limiting, account rules.

Sessions are Starlette's signed cookies (itsdangerous) keyed with the secret file. A session holds
the user id and a fingerprint of the password hash, so a password change ends every other session,
and the user is re-read from the database on each request, so approval, revocation and role
changes take effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from piseduce import crypto
from piseduce.db import write_session
from piseduce.webui.models import ROLE_ADMIN, STATE_ACTIVE, User

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MIN_PASSWORD = 8
MAX_PASSWORD = 256
# Verified against when the email is unknown, so that the answer takes as long as for a real one.
_DUMMY_HASH = crypto.hash_password(secrets.token_urlsafe(16))


class LoginRequired(Exception):
    """Raised by a page that needs a signed-in, approved user."""


class AdminRequired(Exception):
    """Raised by an admin page for a non-admin."""


class CsrfError(Exception):
    """A POST without the session's CSRF token."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: str) -> str | None:
    """The reason why this email is not acceptable, or None."""
    if not email or len(email) > 254 or not EMAIL_RE.match(email):
        return "Enter a valid email address."
    return None


def check_new_password(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password must have at most {MAX_PASSWORD} characters."
    if password != confirm:
        return "The two passwords differ."
    return None


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- CSRF


def csrf_token(request: Request) -> str:
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


async def check_csrf(request: Request) -> None:
    """Every POST carries the session's token, as a form field or (htmx) a header."""
    expected = request.session.get(CSRF_FIELD)
    given = request.headers.get(CSRF_HEADER)
    if not given:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not isinstance(expected, str) or not given or not hmac.compare_digest(expected, given):
        raise CsrfError()


# ---------------------------------------------------------------- rate limiting


class RateLimiter:
    """At most `limit` attempts per key in a sliding window of `window` seconds."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, *keys: str) -> bool:
        """Count one attempt under every key; False when any of them is over the limit."""
        now = time.monotonic()
        allowed = True
        with self._lock:
            for key in keys:
                q = self._hits.setdefault(key, deque())
                while q and q[0] <= now - self.window:
                    q.popleft()
                if len(q) >= self.limit:
                    allowed = False
                else:
                    q.append(now)
            if len(self._hits) > 10_000:  # forget idle keys so memory stays bounded
                for key in [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window]:
                    del self._hits[key]
        return allowed


# ---------------------------------------------------------------- sessions


def login_session(request: Request, user: User) -> None:
    csrf = secrets.token_urlsafe(32)  # a new token at login: no session fixation of the old one
    request.session.clear()
    request.session.update(
        {"uid": user.id, "pwv": password_fingerprint(user.password_hash), CSRF_FIELD: csrf}
    )


def logout_session(request: Request) -> None:
    request.session.clear()


def session_user(request: Request, db: Session) -> User | None:
    uid = request.session.get("uid")
    if not isinstance(uid, int):
        return None
    user = db.get(User, uid)
    if user is None or not user.is_active:
        return None
    if request.session.get("pwv") != password_fingerprint(user.password_hash):
        return None
    return user


def authenticate(db: Session, email: str, password: str) -> User | None:
    """The active user with this email and password, else None: one answer for every failure."""
    user = db.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None:
        crypto.verify_password(_DUMMY_HASH, password)
        return None
    if not crypto.verify_password(user.password_hash, password) or not user.is_active:
        return None
    if crypto.needs_rehash(user.password_hash):
        user.password_hash = crypto.hash_password(password)
    return user


# ---------------------------------------------------------------- admins


def active_admin_count(db: Session) -> int:
    return (
        db.scalar(
            select(func.count()).select_from(User).where(User.role == ROLE_ADMIN, User.state == STATE_ACTIVE)
        )
        or 0
    )


def is_last_admin(db: Session, user: User) -> bool:
    return user.is_admin and user.is_active and active_admin_count(db) <= 1


@dataclass
class NewAdmin:
    email: str
    password: str


DEFAULT_ADMIN_EMAIL = "admin@piseduce.local"


def ensure_first_admin(factory: sessionmaker[Session]) -> NewAdmin | None:
    """On a database without any admin, create one with a random password (returned once, to be
    printed once; never a published default)."""
    with write_session(factory) as db:
        if db.scalar(select(func.count()).select_from(User).where(User.role == ROLE_ADMIN)):
            return None
        password = crypto.generate_password(16)
        existing = db.scalar(select(User).where(User.email == DEFAULT_ADMIN_EMAIL))
        if existing is None:
            existing = User(email=DEFAULT_ADMIN_EMAIL, ssh_keys=[])
            db.add(existing)
        existing.password_hash = crypto.hash_password(password)
        existing.role = ROLE_ADMIN
        existing.state = STATE_ACTIVE
        return NewAdmin(DEFAULT_ADMIN_EMAIL, password)


def set_admin(factory: sessionmaker[Session], email: str, password: str) -> bool:
    """Create or reset an admin account; True when it was created."""
    with write_session(factory) as db:
        email = normalise_email(email)
        user = db.scalar(select(User).where(User.email == email))
        created = user is None
        if user is None:
            user = User(email=email, ssh_keys=[])
            db.add(user)
        user.password_hash = crypto.hash_password(password)
        user.role = ROLE_ADMIN
        user.state = STATE_ACTIVE
        return created
