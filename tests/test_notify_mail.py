"""Notifications by mail, end to end: a real agent's events read through the feed cursor, the
outbox, and a real SMTP server on loopback (STARTTLS, AUTH) receiving them; the server down
means the mail comes later, once; a user never gets another user's events."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.notify_fixtures import ALICE, BOB, Harness, agent_on, harness, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webui_fixtures import AgentProcess, agent_headers, book_on, deployed_on
from piseduce.webui.models import OutboxMessage, utcnow
from piseduce.webui.notify import store
from piseduce.webui.notify.kinds import Notice

ROOT = "root@example.org"


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def site(tmp_path: Path, smtp: SmtpServer) -> Iterator[tuple[Path, AgentProcess]]:
    config = notify_config(tmp_path / "webui", smtp)
    agent = agent_on(config, tmp_path / "agent-a")
    yield config, agent
    agent.stop()


def _due_now(h: Harness) -> None:
    def fn(s: object) -> None:
        from sqlalchemy import update
        from sqlalchemy.orm import Session

        assert isinstance(s, Session)
        s.execute(update(OutboxMessage).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))

    h.write(fn)


async def test_deployment_mail_reaches_its_owner_only_and_an_smtp_outage_only_delays_it(
    site: tuple[Path, AgentProcess], smtp: SmtpServer
) -> None:
    config, agent = site
    async with harness(config) as h:
        await h.notifier.run_once()  # the cursor starts at the agent's present
        assert h.outbox() == [] and smtp.messages == []

        # Bob's booking exists too, and Bob chose no mail for deployments.
        book_on(agent, BOB, ["pi-3"], bin="bobs")
        bob = h.user_id(BOB)
        h.write(lambda s: store.save_prefs(s, bob, events=frozenset(set(Notice) - {Notice.DEPLOY_DONE}),
                                           email=True, webhook_url="", warn_minutes=(30, 5)))
        await asyncio.to_thread(deployed_on, agent, ALICE, "pi-1")
        await h.notifier.run_once()

        (mail,) = smtp.to(ALICE)
        assert mail["Subject"].startswith("[PiSeduce] ") and "deployed on site-a" in mail["Subject"]
        text = mail.get_content()
        assert "pi-1: ssh " in text and "1 node(s) deployed" in text
        assert mail["From"] == "piseduce@example.org" and mail["Message-ID"]
        assert smtp.to(BOB) == []

        # The mail server goes down; an administrator cancels Bob's booking meanwhile.
        smtp.stop()
        bob_rid = book_on(agent, BOB, ["pi-4"], bin="later")[0]
        r = httpx.post(f"{agent.url}/api/reservations/{bob_rid}/destroy",
                       headers=agent_headers(ROOT, admin=True), timeout=10)
        assert r.status_code == 202
        await h.notifier.run_once()
        pending = [m for m in h.outbox() if m.state == "pending"]
        assert [(m.kind, m.user_id) for m in pending] == [("admin_action", bob)]
        assert pending[0].attempts == 1 and "cannot reach the mail server" in pending[0].last_error
        await h.notifier.run_once()  # not due yet (backoff): no second attempt
        assert [m.attempts for m in h.outbox() if m.state == "pending"] == [1]

        smtp.start()
        _due_now(h)
        await h.notifier.run_once()
        (late,) = smtp.to(BOB)
        assert "administrator (root@example.org)" in late.get_content() and f"cancelled by {ROOT}" in \
            late.get_content()
        assert all(m.state == "sent" for m in h.outbox())

        # More passes send nothing again; Alice got only her own.
        _due_now(h)
        await h.notifier.run_once()
        await h.notifier.run_once()
        assert len(smtp.to(ALICE)) == 1 and len(smtp.to(BOB)) == 1
        assert len(smtp.messages) == 2


async def test_a_wrong_smtp_password_is_said_and_retried(
    site: tuple[Path, AgentProcess], smtp: SmtpServer
) -> None:
    config, agent = site
    async with harness(config) as h:
        h.write(lambda s: store.set_smtp_password(s, h.notifier.sender.fernet, "wrong-password"))
        await h.notifier.run_once()
        await asyncio.to_thread(deployed_on, agent, ALICE, "pi-2")
        await h.notifier.run_once()
        (row,) = h.outbox()
        assert row.state == "pending" and "refused the login of 'piseduce-mailer'" in row.last_error
        assert "wrong-password" not in row.last_error
        assert smtp.messages == []
