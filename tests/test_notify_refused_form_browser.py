"""Issue 17, eve's report, in headless Chromium: a user signed up, approved, promoted and demoted,
whose Settings > Notifications form is refused (a mistyped webhook URL) sees exactly what she
submitted again — her ticks, warnings and URL — so that fixing the URL and saving keeps her choice;
then an administrator destroying her reservations, through /api/v1 and on the Manage page, reaches
her by mail (a real SMTP server on loopback) and by signed webhook (a real HTTP receiver)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.api_helpers import API, make_token
from helpers.browser_helpers import ARGS, CHROMIUM
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.notify_fixtures import agent_on, notify_config
from helpers.smtp_server import SMTP_PASSWORD, SmtpServer
from helpers.waiting import wait_until_sync
from helpers.webhook_receiver import Receiver
from helpers.webui_fixtures import WebuiProcess, add_user, book_on
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory, write_session
from piseduce.webui.models import User
from piseduce.webui.notify import store
from piseduce.webui.notify.kinds import Notice

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVE, EVE_PASSWORD = "eve@example.org", "eve-password-0123"  # noqa: S105


def _admin_settings(config: Path) -> None:
    """What Admin > Notifications would hold: the SMTP password, loopback allowed for webhooks."""
    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    try:
        with write_session(session_factory(engine)) as s:
            store.set_smtp_password(s, crypto.load_fernet(cfg.key_path), SMTP_PASSWORD)
            store.set_webhook_hosts(s, ["127.0.0.1"])
    finally:
        engine.dispose()


def _prefs(config: Path, email: str) -> store.Prefs:
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            user = s.query(User).filter_by(email=email).one()
            return store.load_prefs(s, user.id)
    finally:
        engine.dispose()


def _page(browser: Any) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda d: d.accept())
    return page


def _login(page: Any, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/reserve")


def _account_action(admin: Any, url: str, label: str, said: str) -> None:
    admin.goto(f"{url}/admin/users")
    admin.click(f'tr[data-email="{EVE}"] button:has-text("{label}")')
    admin.wait_for_selector(f"text={EVE} {said}")


def _events_shown(page: Any) -> set[Notice]:
    return {n for n in Notice if page.is_checked(f"#event-{n.value}")}


def _admin_notices(receiver: Receiver, smtp: SmtpServer) -> tuple[list[Any], list[dict[str, Any]]]:
    """Eve's mails and webhooks telling of an administrator's action."""
    mails = [m for m in smtp.to(EVE) if "an administrator acted on" in str(m["Subject"])]
    hooks = [json.loads(body) for _, body in receiver.got]
    return mails, [h for h in hooks if h.get("event") == Notice.ADMIN_ACTION.value]


def _told(receiver: Receiver, smtp: SmtpServer, times: int) -> None:
    """Wait until she was told `times` times, by mail and by webhook each."""
    wait_until_sync(lambda: all(len(x) >= times for x in _admin_notices(receiver, smtp)), timeout=30,
                    what=f"{times} mail(s) and webhook(s) to {EVE}")


def test_a_refused_form_keeps_her_choice_and_an_admin_destroy_reaches_her(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    smtp = SmtpServer(tmp_path)
    receiver = Receiver()
    config = notify_config(tmp_path / "webui", smtp)
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    _admin_settings(config)
    agent = agent_on(config, tmp_path / "agent-a")
    web = WebuiProcess(config)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                # Sign-up, approval, promotion and demotion, as on the demo.
                page = _page(browser)
                page.goto(f"{web.url}/signup")
                page.fill("#email", EVE)
                page.fill("#password", EVE_PASSWORD)
                page.fill("#confirm", EVE_PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("text=administrator must approve")
                admin = _page(browser)
                _login(admin, web.url, ADMIN_EMAIL, ADMIN_PASSWORD)
                _account_action(admin, web.url, "Approve", "can now log in.")
                _account_action(admin, web.url, "Promote to admin", "is now an admin")
                _account_action(admin, web.url, "Demote", "is no longer an admin")

                # First visit: she leaves out the administrators' actions and broken nodes.
                _login(page, web.url, EVE, EVE_PASSWORD)
                page.goto(f"{web.url}/settings?tab=notifications")
                assert _events_shown(page) == set(Notice)
                page.uncheck(f"#event-{Notice.ADMIN_ACTION.value}")
                page.uncheck(f"#event-{Notice.NODE_BROKEN.value}")
                page.click("#notify-form button[type=submit]")
                page.wait_for_selector("text=Notification settings saved.")
                assert Notice.ADMIN_ACTION not in _prefs(config, EVE).events

                # She changes her mind: the administrators' actions too, and a webhook (mistyped),
                # other warnings and no mail... then mail again after all.
                page.check(f"#event-{Notice.ADMIN_ACTION.value}")
                page.uncheck(f"#event-{Notice.DEPLOY_DONE.value}")
                page.fill("#warn-minutes", "20")
                typo = receiver.url.replace("http://", "htp://")
                page.fill("#webhook-url", typo)
                page.click("#notify-form button[type=submit]")
                page.wait_for_selector("#notify-form .flash.error >> text=Webhook URL:")
                # The refused form shows what she submitted, ticks included; nothing was saved.
                wanted = set(Notice) - {Notice.NODE_BROKEN, Notice.DEPLOY_DONE}
                assert _events_shown(page) == wanted
                assert page.input_value("#webhook-url") == typo
                assert page.input_value("#warn-minutes") == "20"
                assert page.is_checked("#notify-email")
                stored = _prefs(config, EVE)
                assert Notice.ADMIN_ACTION not in stored.events and stored.webhook_url == ""

                # She fixes the URL only, and saves: her choice is what is stored.
                page.fill("#webhook-url", receiver.url)
                page.click("#notify-form button[type=submit]")
                assert page.inner_text("#webhook-secret").startswith("whsec_")
                prefs = _prefs(config, EVE)
                assert prefs.events == frozenset(wanted)
                assert prefs.webhook_url == receiver.url and prefs.has_secret
                assert prefs.warn_minutes == (20,) and prefs.email

                # The administrator destroys one reservation of hers through /api/v1...
                first, second = book_on(agent, EVE, ["pi-1"])[0], book_on(agent, EVE, ["pi-2"])[0]
                token = make_token(config, ADMIN_EMAIL)
                r = httpx.post(f"{web.url}{API}/reservations/site-a/{first}/destroy",
                               headers={"Authorization": f"Bearer {token}"}, timeout=15)
                assert r.status_code == 202, r.text
                _told(receiver, smtp, 1)

                # ... and the other on the Manage page.
                admin.goto(f"{web.url}/manage")
                admin.check('input[name="sel"][aria-label="select pi-2"]')
                admin.select_option("#m-action", "destroy")
                admin.click("#m-run")
                admin.wait_for_selector("#action-result .flash.ok")
                _told(receiver, smtp, 2)
                mails, hooks = _admin_notices(receiver, smtp)
                text = "\n".join(m.get_content() for m in mails)
                assert f"administrator ({ADMIN_EMAIL})" in text and "pi-1" in text and "pi-2" in text
                assert sorted(h["reservation"] for h in hooks) == sorted([first, second])
            finally:
                browser.close()
    finally:
        web.stop()
        agent.stop()
        receiver.close()
        smtp.stop()
