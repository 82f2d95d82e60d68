"""Signed webhooks, end to end: a real HTTP receiver on loopback checks the HMAC-SHA256 header
with the key the user was shown once; a failing receiver gets the event again later, once; the
SSRF guard refuses loopback and private targets until an administrator allows the host. And the
SMTP password set by the CLI from stdin, stored sealed."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from helpers.agent_helpers import piseduce_cmd, subprocess_env
from helpers.notify_fixtures import ALICE, Harness, agent_on, harness, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webhook_receiver import Receiver
from helpers.webui_fixtures import AgentProcess, deployed_on
from piseduce import crypto
from piseduce.webui.models import NotifySetting, OutboxMessage, utcnow
from piseduce.webui.notify import store, webhook


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500])
    yield r
    r.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, AgentProcess]]:
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    agent = agent_on(config, tmp_path / "agent-a")
    yield config, agent
    agent.stop()
    smtp.stop()


def _due_now(h: Harness) -> None:
    past = utcnow() - dt.timedelta(seconds=1)
    h.write(lambda s: s.execute(update(OutboxMessage).values(next_attempt_at=past)))


async def test_signed_webhook_retried_after_a_failure_and_refused_on_loopback_until_allowed(
    site: tuple[Path, AgentProcess], receiver: Receiver
) -> None:
    config, agent = site
    async with harness(config) as h:
        alice = h.user_id(ALICE)
        fernet = h.notifier.sender.fernet
        secret = h.write(lambda s: store.new_webhook_secret(s, fernet, alice))
        h.write(lambda s: store.save_prefs(s, alice, events=store.Prefs().events, email=False,
                                           webhook_url=receiver.url, warn_minutes=(30, 5)))
        # The key is sealed at rest.
        assert secret.encode() not in Path(h.cfg.database_url.removeprefix("sqlite:///")).read_bytes()
        await h.notifier.run_once()
        await asyncio.to_thread(deployed_on, agent, ALICE, "pi-1")
        await h.notifier.run_once()
        (row,) = h.outbox()
        assert row.channel == "webhook" and row.state == "pending"
        assert "private or loopback address (127.0.0.1)" in row.last_error and receiver.got == []

        h.write(lambda s: store.set_webhook_hosts(s, ["127.0.0.1"]))
        _due_now(h)
        await h.notifier.run_once()  # the receiver answers 500: not sent
        assert len(receiver.got) == 1 and h.outbox()[0].state == "pending"
        assert "HTTP 500" in h.outbox()[0].last_error
        _due_now(h)
        await h.notifier.run_once()
        _due_now(h)
        await h.notifier.run_once()
        assert len(receiver.got) == 2 and h.outbox()[0].state == "sent"

        headers, body = receiver.got[1]
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-piseduce-signature"], expected)
        assert headers["x-piseduce-event"] == "deploy_done" and headers["content-type"] == "application/json"
        data = json.loads(body)
        assert data["event"] == "deploy_done" and data["agent"] == "site-a"
        assert data["nodes"][0]["node"] == "pi-1" and data["nodes"][0]["connection"].startswith("ssh ")
        # The same delivery both times (receivers may drop a repeat by it).
        assert receiver.got[0][0]["x-piseduce-delivery"] == headers["x-piseduce-delivery"]
        # A forged body does not match.
        assert not hmac.compare_digest(
            expected, "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest())


async def test_the_ssrf_guard() -> None:
    allowed: list[str] = []
    assert "https://" in webhook.check_url("file:///etc/passwd", allowed)
    assert "https://" in webhook.check_url("gopher://example.org/", allowed)
    assert "user name or password" in webhook.check_url("https://u:p@example.org/h", allowed)
    assert webhook.check_url("https://example.org:99999/", allowed) == "not a URL"
    assert "not among the hosts" in webhook.check_url("https://evil.example.com/", ["*.example.org"])
    assert webhook.check_url("https://hooks.example.org/x", ["*.example.org"]) == ""
    for target in ("http://127.0.0.1/", "http://localhost:8090/", "http://[::1]/", "http://10.1.2.3/",
                   "http://169.254.169.254/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"):
        problem = await webhook.check_target(target, allowed)
        assert "private or loopback" in problem, (target, problem)
    assert await webhook.check_target("http://localhost:8090/", ["localhost"]) == ""
    assert "does not resolve" in await webhook.check_target("http://no-such-host.invalid/", allowed)


async def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    import httpx

    receiver.codes = [302]
    async with httpx.AsyncClient() as client:
        with pytest.raises(webhook.WebhookError, match="HTTP 302"):
            await webhook.post(client, receiver.url, b"k", {"event": "x"}, event="x", delivery="d",
                               allowed=["127.0.0.1"])
    assert len(receiver.got) == 1


def test_smtp_password_from_stdin_is_stored_sealed(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path)
    smtp.stop()
    config = notify_config(tmp_path / "webui", smtp)
    secret = "s3cret-mail-password"
    run = subprocess.run(piseduce_cmd("webui", "smtp-password", str(config)), input=secret + "\n",
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "stored" in run.stdout and secret not in run.stdout + run.stderr
    db_file = Path(str(config.parent / "webui.db"))
    assert secret.encode() not in db_file.read_bytes()
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory

    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    try:
        with session_factory(engine)() as s:
            row = s.scalar(select(NotifySetting).where(NotifySetting.key == "smtp_password"))
            assert row is not None
            assert crypto.decrypt_str(crypto.load_fernet(cfg.key_path), row.value["token"]) == secret
    finally:
        engine.dispose()
    # The password in the config file is refused with one clear line.
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "smtp_password": secret}))
    run = subprocess.run(piseduce_cmd("webui", "init-db", str(config)), capture_output=True, text=True,
                         env=subprocess_env(), timeout=120)
    assert run.returncode != 0 and "smtp-password" in run.stderr and "Traceback" not in run.stderr
    assert secret not in run.stderr
