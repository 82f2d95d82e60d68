"""Nothing lost, nothing twice, with the real server: `piseduce webui serve` is stopped while a
deployment finishes, and sends its mail once when it is back; the mail server is stopped while
an administrator acts, and the mail arrives once when it is back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from helpers.notify_fixtures import ALICE, notify_config
from helpers.smtp_server import SMTP_PASSWORD, SmtpServer
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import AgentProcess, WebuiProcess, agent_headers, deployed_on, register_agent
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory, write_session
from piseduce.webui.models import NotifyCursor
from piseduce.webui.notify import store

pytestmark = pytest.mark.slow
ROOT = "root@example.org"



def test_web_ui_down_then_mail_server_down_each_mail_once(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp, notify_retry_seconds=0.5)
    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    sessions = session_factory(engine)
    with write_session(sessions) as s:
        store.set_smtp_password(s, crypto.load_fernet(cfg.key_path), SMTP_PASSWORD)
    agent = AgentProcess(tmp_path / "agent-a", nodes=3)
    register_agent(config, "site-a", agent.port, "raspberry")
    web = WebuiProcess(config)
    try:
        def cursor() -> int | None:
            with sessions() as s:
                row = s.get(NotifyCursor, 1)
                return None if row is None else row.last_event_id

        wait_until_sync(lambda: cursor() is not None, timeout=30, what="the notifier read the agent's feed")
        web.stop()

        # While the web UI is down, Alice's deployment finishes.
        rid = deployed_on(agent, ALICE, "pi-1")
        time.sleep(0.5)
        assert smtp.to(ALICE) == []

        web = WebuiProcess(config)
        wait_until_sync(lambda: len(smtp.to(ALICE)) == 1, timeout=60, what="the missed mail")
        assert "pi-1: ssh " in smtp.to(ALICE)[0].get_content()

        # The mail server goes down; an administrator reboots Alice's node meanwhile.
        smtp.stop()
        r = httpx.post(f"{agent.url}/api/reservations/{rid}/reboot", headers=agent_headers(ROOT, admin=True),
                       timeout=10)
        assert r.status_code == 202, r.text
        time.sleep(3)  # several passes, several failed attempts
        smtp.start()
        wait_until_sync(lambda: len(smtp.to(ALICE)) == 2, timeout=60, what="the delayed mail")
        later = smtp.to(ALICE)[1]
        assert "administrator" in later["Subject"]
        assert "reboot requested by root@example.org" in later.get_content()

        # A restart resends nothing.
        web.stop()
        web = WebuiProcess(config)
        time.sleep(3)
        assert len(smtp.to(ALICE)) == 2
        assert [m["Subject"] for m in smtp.messages if m["To"] != ALICE] == []
    finally:
        web.stop()
        agent.stop()
        smtp.stop()
        engine.dispose()
