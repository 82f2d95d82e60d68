"""The notification tests' pieces: a web UI config pointing at the loopback SMTP server, with
users and one real agent, and an in-process notifier (its passes run when the test says)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from helpers.smtp_server import SMTP_PASSWORD, SMTP_USER, SmtpServer
from helpers.webui_fixtures import AgentProcess, add_user, register_agent, write_webui_config
from piseduce import crypto
from piseduce.config import WebuiConfig, load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.database import Database
from piseduce.webui.models import OutboxMessage, User
from piseduce.webui.notify import store
from piseduce.webui.notify.notifier import Notifier

ALICE, BOB = "alice@example.org", "bob@example.org"
PASSWORD = "pw-0123456789"  # noqa: S105


def notify_config(folder: Path, smtp: SmtpServer, **extra: Any) -> Path:
    config = write_webui_config(
        folder, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="starttls", smtp_user=SMTP_USER,
        smtp_from="piseduce@example.org", smtp_ca_file=str(smtp.cert), notify_poll_seconds=0.3, **extra,
    )
    for email in (ALICE, BOB):
        add_user(config, email, PASSWORD)
    return config


@dataclass
class Harness:
    cfg: WebuiConfig
    database: Database
    hub: AgentClient
    notifier: Notifier

    def write(self, fn: Any) -> Any:
        with self.database.factory() as s, s.begin():
            return fn(s)

    def read(self, fn: Any) -> Any:
        with self.database.factory() as s:
            return fn(s)

    def user_id(self, email: str) -> int:
        return int(self.read(lambda s: s.scalar(select(User.id).where(User.email == email))))

    def outbox(self) -> list[OutboxMessage]:
        return list(self.read(lambda s: list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))))


@contextlib.asynccontextmanager
async def harness(config: Path) -> AsyncIterator[Harness]:
    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    database = Database(session_factory(engine))
    fernet = crypto.load_fernet(cfg.key_path)
    hub = AgentClient(cfg, database, fernet)
    h = Harness(cfg, database, hub, Notifier(cfg, database, hub, fernet))
    h.write(lambda s: store.set_smtp_password(s, fernet, SMTP_PASSWORD))
    try:
        yield h
    finally:
        await h.notifier.sender.close()
        await hub.close()
        database.close()
        engine.dispose()


def agent_on(config: Path, folder: Path) -> AgentProcess:
    agent = AgentProcess(folder, nodes=4)
    register_agent(config, "site-a", agent.port, "raspberry")
    return agent
