"""The web UI's database: user accounts and the agents it manages.

Everything else (nodes, reservations, deployments) lives in the agents. Secrets are never stored in
clear: account passwords are argon2id hashes; agent tokens and testbed passwords are Fernet tokens
made with the key file.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, String, Text
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
    type_annotation_map = {list[Any]: JSON}


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
