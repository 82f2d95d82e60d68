"""Accounts and sessions: who is asking, CSRF tokens, password checks, account rules.

Sessions are server-side (webui/sessions.py): the cookie holds a random id, the database its
hash; the user is re-read from the database on each request, so approval, revocation and role
changes take effect at once. The CSRF token of a page is an HMAC of the session's id with the
secret file (OWASP's "signed double submit" tied to the session): a new session, at login, gets
new tokens, and a token is worth nothing with another session's cookie.

Password hashes (argon2id, ~0.7 s of CPU on 4 lanes each) are computed in a pool of their own,
one per two cores, at a lower CPU priority (argon2's lane threads inherit it): never on the event
loop, and a burst of logins queues behind the pages instead of starving them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from piseduce import crypto
from piseduce.db import write_session
from piseduce.protocol import END_USER_RE
from piseduce.webui.models import ROLE_ADMIN, STATE_ACTIVE, User
from piseduce.webui.sessions import state_of

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
HASHING_NICE = 10


def _lower_priority() -> None:
    """Run this thread (and the threads argon2 starts from it) behind the event loop's thread."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICE)


_HASHING = ThreadPoolExecutor(
    max_workers=max(1, (os.cpu_count() or 2) // 2),
    thread_name_prefix="webui-argon2",
    initializer=_lower_priority,
)


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
    if not END_USER_RE.match(email):
        # Valid for e-mail, but the agents could not name this user (protocol.END_USER_RE).
        return ("Use an address made of letters, digits and . _ + - only, with at most 64 "
                "characters before the @.")
    return None


def check_new_password(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"The password must have at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"The password must have at most {MAX_PASSWORD} characters."
    if password != confirm:
        return "The two passwords differ."
    return None


# ---------------------------------------------------------------- password hashes, off the loop


async def check_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches the hash; None (an unknown account) takes as long and is False."""
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(_HASHING, crypto.verify_password, password_hash or _DUMMY_HASH, password)
    return ok and password_hash is not None


async def new_hash(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_HASHING, crypto.hash_password, password)


# ---------------------------------------------------------------- CSRF


def _secret(request: Request) -> str:
    secret: str = request.app.state.secret
    return secret


def csrf_token(request: Request) -> str:
    raw = state_of(request).ensure_id()
    return hmac.new(_secret(request).encode(), f"csrf\0{raw}".encode(), hashlib.sha256).hexdigest()


async def check_csrf(request: Request) -> None:
    """Every POST carries its session's token, as a form field or (htmx) a header."""
    raw = state_of(request).raw_id
    given = request.headers.get(CSRF_HEADER)
    if not given:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if raw is None or not given or not hmac.compare_digest(csrf_token(request), given):
        raise CsrfError()


# ---------------------------------------------------------------- sessions


def login_session(request: Request, user: User) -> None:
    """This browser is now `user`'s: a new session (new id, new CSRF tokens) replaces its old one."""
    state_of(request).login(user.id)


def logout_session(request: Request) -> None:
    state_of(request).end()


def session_user_id(request: Request) -> int | None:
    state = state_of(request)
    return None if state.ended else state.user_id


def active_user(db: Session, user_id: int) -> User | None:
    user = db.get(User, user_id)
    return user if user is not None and user.is_active else None


def find_user(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == normalise_email(email)))


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
