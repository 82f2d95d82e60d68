"""Helpers of the users' API tests: tokens written straight into the web UI's database (what
Settings > API tokens creates), and their Authorization header."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

API = "/api/v1"


def make_token(
    config: Path, email: str, scope: str = "write", days: int | None = None, name: str = "test"
) -> str:
    """A new token of `email`'s account; its secret."""
    from sqlalchemy import select

    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui import tokens
    from piseduce.webui.models import User

    engine = make_engine(load_webui_config(config).database_url)
    try:
        with write_session(session_factory(engine)) as s:  # BEGIN IMMEDIATE: no SQLITE_BUSY_SNAPSHOT
            uid = s.scalar(select(User.id).where(User.email == email))
            assert uid is not None, email
            made = tokens.create(s, uid, name, scope, days, dt.datetime.now(dt.UTC))
            assert not isinstance(made, str), made
            return made.secret
    finally:
        engine.dispose()


def set_user_state(config: Path, email: str, state: str) -> None:
    from sqlalchemy import update

    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui.models import User

    engine = make_engine(load_webui_config(config).database_url)
    try:
        with write_session(session_factory(engine)) as s:  # BEGIN IMMEDIATE: no SQLITE_BUSY_SNAPSHOT
            s.execute(update(User).where(User.email == email).values(state=state))
    finally:
        engine.dispose()


def expire_tokens(config: Path, email: str, when: dt.datetime) -> None:
    """Every token of `email` expires at `when` (a test cannot wait a day)."""
    from sqlalchemy import select, update

    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui.models import ApiToken, User

    engine = make_engine(load_webui_config(config).database_url)
    try:
        with write_session(session_factory(engine)) as s:  # BEGIN IMMEDIATE: no SQLITE_BUSY_SNAPSHOT
            uid = s.scalar(select(User.id).where(User.email == email))
            s.execute(update(ApiToken).where(ApiToken.user_id == uid).values(expires_at=when))
    finally:
        engine.dispose()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
