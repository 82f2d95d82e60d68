"""A slot-end warning that could not be sent before its slot ended is dropped, not sent late
(issue 17, fix17: one retried while SMTP was down arrived 21 min after the slot had ended, after the
'ended' mail). A real agent, the real notifier, a real SMTP server on loopback, down then up."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import update

from helpers.notify_fixtures import ALICE, agent_on, harness, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webui_fixtures import book_on
from piseduce.webui.models import OutboxMessage, utcnow
from piseduce.webui.notify import store

pytestmark = pytest.mark.slow


async def test_a_warning_whose_slot_ended_is_dropped(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    agent = agent_on(config, tmp_path / "agent-a")
    try:
        async with harness(config) as h:
            alice = h.user_id(ALICE)
            h.write(lambda s: store.save_prefs(s, alice, events=store.Prefs().events, email=True,
                                               webhook_url="", warn_minutes=(1,)))
            await h.notifier.run_once()
            smtp.stop()
            await asyncio.to_thread(book_on, agent, ALICE, ["pi-1"], hours=0.02, bin="short")  # 72 s
            await asyncio.sleep(14)  # the 1-minute warning is due
            await h.notifier.run_once()
            (row,) = [m for m in h.outbox() if m.kind == "slot_ending"]
            assert row.state == "pending" and row.attempts == 1, row.last_error
            await asyncio.sleep(62)  # the slot ends while the mail server is down
            smtp.start()
            h.write(lambda s: s.execute(update(OutboxMessage).values(
                next_attempt_at=utcnow() - dt.timedelta(seconds=1))))
            await h.notifier.run_once()
            (row,) = [m for m in h.outbox() if m.kind == "slot_ending"]
            assert row.state == "dropped" and "ended" in row.last_error, (row.state, row.last_error)
            assert [m for m in smtp.to(ALICE) if "ends in" in m["Subject"]] == []
    finally:
        agent.stop()
        smtp.stop()
