"""The web UI's database: user accounts and the agents it manages.

Everything else (nodes, reservations, deployments) lives in the agents. Secrets are never stored in
clear: account passwords are argon2id hashes; agent tokens and testbed passwords are Fernet tokens
made with the key file.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from piseduce.dbtypes import UTCDateTime, utcnow

ROLE_USER = "user"
ROLE_ADMIN = "admin"
STATE_PENDING = "pending"
STATE_ACTIVE = "active"
STATE_REVOKED = "revoked"

AGENT_CONNECTED = "connected"
AGENT_UNREACHABLE = "unreachable"
AGENT_UNAUTHORIZED = "unauthorized"
AGENT_ERROR = "error"


class Base(DeclarativeBase):
    type_annotation_map = {list[Any]: JSON, dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=ROLE_USER)
    state: Mapped[str] = mapped_column(String(16), default=STATE_PENDING)
    # OpenSSH public key lines, validated on input.
    ssh_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)
    g5k_user: Mapped[str] = mapped_column(String(128), default="")
    g5k_password: Mapped[str | None] = mapped_column(Text, nullable=True)  # Fernet token
    iotlab_user: Mapped[str] = mapped_column(String(128), default="")
    iotlab_password: Mapped[str | None] = mapped_column(Text, nullable=True)  # Fernet token
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def is_active(self) -> bool:
        return self.state == STATE_ACTIVE


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column()
    token: Mapped[str] = mapped_column(Text)  # Fernet token of the agent's auth token
    node_type: Mapped[str] = mapped_column(String(32), default="")
    site: Mapped[str] = mapped_column(String(128), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    needs_credentials: Mapped[bool] = mapped_column(default=False)
    # Its last /api/info (piseduce.protocol.AgentInfo): the features the pages offer.
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(String(16), default=AGENT_UNREACHABLE)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_seen: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def base_url(self) -> str:
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        return f"http://{host}:{self.port}"


class WebSession(Base):
    """A browser's session, server-side: the cookie holds a random id, this row its SHA-256 (so a
    copy of the database logs nobody in). Deleting the row ends the session at once."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # None: an anonymous visitor's row, kept only to carry a message to the next page.
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # flash messages
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class Throttle(Base):
    """One counter of the login limiter (webui/throttle.py), shared by every web UI process: the
    failures under one key (an account from one source, a source, an account from unknown
    browsers, a device cookie...) and until when that key must wait."""

    __tablename__ = "throttle"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the key's text
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    blocked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


TOKEN_READ = "read"  # noqa: S105 - a scope's name
TOKEN_WRITE = "write"  # noqa: S105
TOKEN_SCOPES = (TOKEN_READ, TOKEN_WRITE)


class ApiToken(Base):
    """A personal access token of the users' API (webui/tokens.py). The secret is shown once at
    creation; this row keeps its public prefix (the lookup key, unique and indexed) and the
    SHA-256 of the whole secret, so a copy of the database authenticates nobody."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(8), default=TOKEN_READ)
    prefix: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CalendarFeed(Base):
    """A user's private iCalendar feed (webui/calendar_feed.py): only the SHA-256 of the URL's
    secret is kept (256 random bits: a plain hash is enough, and it is the lookup key), so a copy
    of the database reads nobody's calendar. One per user; regenerating replaces (revokes) it."""

    __tablename__ = "calendar_feeds"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CalendarEntry(Base):
    """What a feed last said of one reservation: a digest of its fields, and the SEQUENCE and
    LAST-MODIFIED it was given, bumped when the digest changes (RFC 5545 3.8.7.4: calendar apps
    take a higher SEQUENCE as the newer version of the same UID)."""

    __tablename__ = "calendar_entries"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    uid: Mapped[str] = mapped_column(String(160), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    modified: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """One row of the operators' audit trail (webui/audit.py): who did what, when, from where.
    Append-only: no route updates or deletes a row; only the retention chore purges old ones. The
    actor is kept by id *and* email, without a foreign key, so that a removed account's past
    actions stay readable."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    actor_email: Mapped[str] = mapped_column(String(254), default="")
    source: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(48), index=True)
    target_kind: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# ---------------------------------------------------------------- notifications (webui/notify/)

OUTBOX_PENDING = "pending"
OUTBOX_SENT = "sent"
OUTBOX_FAILED = "given_up"  # after its last attempt
OUTBOX_DROPPED = "dropped"  # outdated before it could be sent (a warning whose slot ended)


class NotifyCursor(Base):
    """How far the notifications have read one agent's event log (its feed's event ids): advanced
    in the transaction that queues what was read, so nothing is read twice or skipped."""

    __tablename__ = "notify_cursors"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotifyPrefs(Base):
    """A user's choice of events and channels; no row: the defaults (notify/kinds.py)."""

    __tablename__ = "notify_prefs"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the EventKind values wanted
    email: Mapped[bool] = mapped_column(Boolean, default=True)
    webhook_url: Mapped[str] = mapped_column(String(2048), default="")
    # Fernet token of the webhook's HMAC key (shown once when generated).
    webhook_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    warn_minutes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxMessage(Base):
    """One notification to deliver on one channel. `dedupe_key` (unique) is what the event was:
    queueing it again is a no-op, so a re-read feed or a second web UI sends nothing twice.
    Marked sent only once the SMTP server or the webhook's receiver accepted it."""

    __tablename__ = "notify_outbox"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # email | webhook
    kind: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    subject: Mapped[str] = mapped_column(String(255), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=OUTBOX_PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NotifySetting(Base):
    """The notifications' settings an administrator changes on the admin page: the webhooks'
    allowed hosts, the SMTP password (a Fernet token, never in clear)."""

    __tablename__ = "notify_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
