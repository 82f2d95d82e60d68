"""Helpers of the engine tests: a migrated agent database, config files for the fake driver, nodes
and reservations written straight through the ORM (the tests do not depend on the API)."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from helpers.constants import TOKEN
from piseduce.agent.models import Action, Event, Node, Reservation, utcnow
from piseduce.config import AgentConfig, load_agent_config
from piseduce.db import make_engine, session_factory, upgrade


def write_config(folder: Path, db_url: str, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "auth_token": [TOKEN],
        "db_url": db_url,
        "driver": "helpers.fake_driver:FakeDriver",
        "fake_log": str(folder / "fake.log"),
        "poll_interval": 0.05,
        "timeout_scale": 1.0,
        "lease_seconds": 30,
        "key_file": str(folder / "secret.key"),
    }
    data.update(extra)
    path = folder / "config_agent.json"
    path.write_text(json.dumps(data))
    return path


def load_config(path: Path) -> AgentConfig:
    return load_agent_config(path, check_files=False)


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'agent.db'}"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the server of PISEDUCE_PG_URL, dropped afterwards."""
    base = os.environ["PISEDUCE_PG_URL"]
    name = f"engine_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def migrated(url: str) -> tuple[Engine, sessionmaker[Session]]:
    upgrade("agent", url)
    engine = make_engine(url)
    return engine, session_factory(engine)


def add_node(sessions: sessionmaker[Session], name: str, **attrs: Any) -> None:
    with sessions() as s:
        s.add(Node(name=name, ip="127.0.0.1", properties={"model": "RPI4B"}, attrs=attrs))
        s.commit()


def add_reservation(
    sessions: sessionmaker[Session],
    node: str,
    *,
    status: str = "scheduled",
    start: dt.datetime | None = None,
    hours: float = 1.0,
    credentials: str | None = None,
    owner: str = "alice@example.org",
) -> int:
    start = start or utcnow() - dt.timedelta(seconds=1)
    end = start + dt.timedelta(hours=hours)
    with sessions() as s:
        r = Reservation(
            node_name=node,
            owner=owner,
            bin="exp",
            start=start,
            end=end,
            busy_until=end + dt.timedelta(minutes=10),
            status=status,
            params={"environment": "tiny"},
            credentials=credentials,
        )
        s.add(r)
        s.commit()
        return r.id


def reservation(sessions: sessionmaker[Session], rid: int) -> Reservation:
    with sessions() as s:
        r = s.get(Reservation, rid)
        assert r is not None
        s.expunge(r)
        return r


def actions(sessions: sessionmaker[Session], rid: int) -> list[Action]:
    with sessions() as s:
        rows = list(s.scalars(select(Action).where(Action.reservation_id == rid).order_by(Action.id)))
        s.expunge_all()
        return rows


def events(sessions: sessionmaker[Session], rid: int) -> list[Event]:
    with sessions() as s:
        rows = list(s.scalars(select(Event).where(Event.reservation_id == rid).order_by(Event.id)))
        s.expunge_all()
        return rows


def messages(sessions: sessionmaker[Session], rid: int) -> list[str]:
    return [e.message for e in events(sessions, rid)]


def fake_runs(log: Path) -> Counter[tuple[str, str, str]]:
    """(node, process, step) -> how many times run() was called."""
    if not log.exists():
        return Counter()
    return Counter(tuple(line.split()) for line in log.read_text().splitlines() if line.strip())  # type: ignore[misc]
