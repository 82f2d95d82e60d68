"""Personal access tokens of the users' API (`/api/v1`, webui/api/).

A token is `pst_` + 32 random bytes (urlsafe base64, 43 characters): 256 bits, so the SHA-256
of it is the right way to keep it (a slow password hash such as argon2id defends low-entropy
secrets against guessing; nobody guesses 256 random bits, and the lookup must stay cheap, since
every API call makes one). The row holds the secret's first characters as a public prefix,
unique and indexed: one indexed query finds the only row that may match, and the hashes are
compared in constant time. The secret itself is shown once, when it is created, and never stored.

Every function here is a function of a `Session`, run in the web UI's `Database` threads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.webui.models import TOKEN_READ, TOKEN_SCOPES, TOKEN_WRITE, ApiToken, User

SECRET_PREFIX = "pst_"  # noqa: S105 - the public start of every token
# `pst_` + 12 characters of the random part: the public lookup key (72 bits, never a collision
# in practice; the unique index refuses one anyway).
PREFIX_CHARS = len(SECRET_PREFIX) + 12
SECRET_RE = re.compile(r"^pst_[A-Za-z0-9_-]{43}$")
NAME_RE = re.compile(r"^[A-Za-z0-9 ._-]{1,64}$")
MAX_TOKENS = 50  # live tokens per account
MAX_DAYS = 3650
# The last use is written at most this often (one write per API call would queue the writers).
LAST_USED_EVERY = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class NewToken:
    """A token just created: `secret` is the one and only time anyone sees it."""

    id: int
    name: str
    scope: str
    secret: str
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class TokenUser:
    """Who a valid token speaks for, and with what rights."""

    user: User
    token_id: int
    scope: str
    last_used: dt.datetime | None

    @property
    def can_write(self) -> bool:
        return self.scope == TOKEN_WRITE


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_request(name: str, scope: str, days: int | None) -> str | None:
    """Why a token cannot be created with these values, in words, or None."""
    if not NAME_RE.match(name):
        return "Name the token (1 to 64 letters, digits, spaces, '.', '_' or '-'), e.g. 'laptop'."
    if scope not in TOKEN_SCOPES:
        return f"The scope is '{TOKEN_READ}' (look only) or '{TOKEN_WRITE}' (look and act)."
    if days is not None and not 1 <= days <= MAX_DAYS:
        return f"The expiry is a number of days from 1 to {MAX_DAYS}, or none."
    return None


def create(
    s: Session, user_id: int, name: str, scope: str, days: int | None, now: dt.datetime
) -> NewToken | str:
    """A new token of `user_id`, or why not (in words). The values are checked by `check_request`."""
    problem = check_request(name, scope, days)
    if problem:
        return problem
    if len(live(s, user_id, now)) >= MAX_TOKENS:
        return f"At most {MAX_TOKENS} tokens per account: revoke one you no longer use."
    secret = new_secret()
    expires = now + dt.timedelta(days=days) if days is not None else None
    row = ApiToken(
        user_id=user_id,
        name=name,
        scope=scope,
        prefix=secret[:PREFIX_CHARS],
        secret_hash=secret_hash(secret),
        created_at=now,
        expires_at=expires,
    )
    s.add(row)
    s.flush()
    return NewToken(row.id, name, scope, secret, expires)


def live(s: Session, user_id: int, now: dt.datetime) -> list[ApiToken]:
    """The account's tokens that still work, newest first."""
    rows = s.scalars(
        select(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return [r for r in rows if r.expires_at is None or r.expires_at > now]


def listed(s: Session, user_id: int) -> list[ApiToken]:
    """Every token of the account not revoked (expired ones included, said so), newest first."""
    return list(
        s.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def revoke(s: Session, user_id: int, token_id: int, now: dt.datetime) -> ApiToken | None:
    """Revoke one of the account's own tokens; the row, or None when it has no such token."""
    row = s.get(ApiToken, token_id)
    if row is None or row.user_id != user_id or row.revoked_at is not None:
        return None
    row.revoked_at = now
    return row


def revoke_all(s: Session, user_id: int, now: dt.datetime) -> int:
    """Revoke every token of the account (an admin revoked it): how many were live."""
    rows = s.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)))
    n = 0
    for row in rows:
        row.revoked_at = now
        n += 1
    return n


def authenticate(s: Session, secret: str, now: dt.datetime) -> TokenUser | None:
    """The user a token speaks for; None for an unknown, revoked or expired token, and for a
    token whose account is not active (pending, revoked) any more."""
    if not SECRET_RE.match(secret):
        return None
    row = s.scalar(select(ApiToken).where(ApiToken.prefix == secret[:PREFIX_CHARS]))
    if row is None or not hmac.compare_digest(row.secret_hash, secret_hash(secret)):
        return None
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    user = s.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    return TokenUser(user, row.id, row.scope, row.last_used)


def touch(s: Session, token_id: int, now: dt.datetime) -> None:
    row = s.get(ApiToken, token_id)
    if row is not None:
        row.last_used = now


def needs_touch(last_used: dt.datetime | None, now: dt.datetime) -> bool:
    return last_used is None or now - last_used >= LAST_USED_EVERY
