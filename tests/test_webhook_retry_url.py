"""A webhook retry follows the user's current URL (issue 17, fix17b #5; see sender._jobs): the
first attempt fails at the old receiver, the user moves the webhook to a new receiver, and the
retry reaches the new one — once, signed with the current key — while the old receiver gets
nothing more. Moved to an address the guard refuses, the retry is refused at delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.notify_fixtures import ALICE, agent_on, harness, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webui_fixtures import AgentProcess, deployed_on
from piseduce.webui.notify import store
from test_notify_webhooks import Receiver, _due_now


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, AgentProcess]]:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    agent = agent_on(config, tmp_path / "agent-a")
    yield config, agent
    agent.stop()
    smtp.stop()


async def test_a_retry_goes_to_the_current_url(site: tuple[Path, AgentProcess]) -> None:
    config, agent = site
    old, new = Receiver([500]), Receiver()
    try:
        async with harness(config) as h:
            alice = h.user_id(ALICE)
            fernet = h.notifier.sender.fernet
            h.write(lambda s: store.set_webhook_hosts(s, ["127.0.0.1"]))
            secret = h.write(lambda s: store.new_webhook_secret(s, fernet, alice))

            def point_at(url: str) -> None:
                h.write(lambda s: store.save_prefs(s, alice, events=store.Prefs().events, email=False,
                                                   webhook_url=url, warn_minutes=(30, 5)))

            point_at(old.url)
            await h.notifier.run_once()
            await asyncio.to_thread(deployed_on, agent, ALICE, "pi-1")
            await h.notifier.run_once()
            assert len(old.got) == 1 and "HTTP 500" in h.outbox()[0].last_error

            point_at("http://10.20.30.40/hook")  # saved straight to the store: only delivery checks
            _due_now(h)
            await h.notifier.run_once()
            assert "10.20.30.40 is not among the hosts" in h.outbox()[0].last_error
            assert h.outbox()[0].state == "pending"

            point_at(new.url)
            _due_now(h)
            await h.notifier.run_once()
            _due_now(h)
            await h.notifier.run_once()
            assert len(old.got) == 1 and len(new.got) == 1 and h.outbox()[0].state == "sent"
            headers, body = new.got[0]
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["x-piseduce-signature"], expected)
            assert headers["x-piseduce-delivery"] == old.got[0][0]["x-piseduce-delivery"]
    finally:
        old.close()
        new.close()
