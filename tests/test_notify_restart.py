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


def _stop_api(agent: AgentProcess) -> None:
    """Only the agent's API goes down: its executor goes on writing events nobody can read."""
    api = agent.procs.pop(0)
    api.terminate()
    api.wait(timeout=10)


def _start_api(agent: AgentProcess) -> None:
    import subprocess

    from helpers.webui_fixtures import piseduce_cmd, subprocess_env

    log = open(agent.folder / "api.log", "ab")  # noqa: SIM115 - closed with the process
    agent.procs.insert(0, subprocess.Popen(piseduce_cmd("agent", "api", str(agent.config)),
                                           env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT))
    wait_until_sync(lambda: _up(agent), timeout=30, what="the agent's API back")


def _up(agent: AgentProcess) -> bool:
    try:
        return httpx.get(f"{agent.url}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_one_agent_down_the_others_notices_flow_and_its_own_come_once_when_back(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    sessions = session_factory(engine)
    with write_session(sessions) as s:
        store.set_smtp_password(s, crypto.load_fernet(cfg.key_path), SMTP_PASSWORD)
    a = AgentProcess(tmp_path / "agent-a", nodes=2)
    b = AgentProcess(tmp_path / "agent-b", nodes=2)
    a_id = register_agent(config, "site-a", a.port, "raspberry")
    b_id = register_agent(config, "site-b", b.port, "raspberry")
    web = WebuiProcess(config)
    try:
        def cursor(agent_id: int) -> int | None:
            with sessions() as s:
                row = s.get(NotifyCursor, agent_id)
                return None if row is None else row.last_event_id

        wait_until_sync(lambda: cursor(a_id) is not None and cursor(b_id) is not None, timeout=30,
                        what="the notifier read both feeds")
        # On site-b a deployment is under way when its API goes down; it finishes meanwhile.
        from helpers.webui_fixtures import book_on

        rid_b = book_on(b, ALICE, ["pi-1"])[0]
        r = httpx.post(f"{b.url}/api/reservations/{rid_b}/deploy", json={"environment": "tiny"},
                       headers=agent_headers(ALICE), timeout=10)
        assert r.status_code == 202, r.text
        _stop_api(b)
        kept = cursor(b_id)

        # site-a's notice still arrives while site-b is down
        deployed_on(a, ALICE, "pi-2")
        wait_until_sync(lambda: len(smtp.to(ALICE)) == 1, timeout=60, what="site-a's mail with site-b down")
        assert "site-a" in smtp.to(ALICE)[0].get_content()
        time.sleep(1.5)  # several passes with site-b down
        assert cursor(b_id) == kept and len(smtp.to(ALICE)) == 1

        _start_api(b)
        wait_until_sync(lambda: len(smtp.to(ALICE)) == 2, timeout=60, what="site-b's missed mail")
        assert "site-b" in smtp.to(ALICE)[1].get_content()
        time.sleep(2)
        assert len(smtp.to(ALICE)) == 2  # once
        assert (cursor(b_id) or 0) > (kept or 0)
    finally:
        web.stop()
        a.stop()
        b.stop()
        smtp.stop()
        engine.dispose()
