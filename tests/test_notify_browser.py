"""Settings > Notifications and Admin > Notifications in headless Chromium: a user chooses events,
warnings and a webhook (refused on loopback until an administrator allows it, then its signing
key shown once), at 1400 px and 390 px; screenshots for the guides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helpers.browser_helpers import ARGS, CHROMIUM, SHOTS
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.notify_fixtures import ALICE, PASSWORD, notify_config
from helpers.smtp_server import SmtpServer
from helpers.webui_fixtures import WebuiProcess, add_user
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui.models import User
from piseduce.webui.notify.kinds import Notice
from piseduce.webui.notify.store import load_prefs

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _login(page: Any, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/reserve")


def _prefs(config: Path, email: str) -> Any:
    engine = make_engine(load_webui_config(config).database_url)
    try:
        with session_factory(engine)() as s:
            user = s.query(User).filter_by(email=email).one()
            return load_prefs(s, user.id)
    finally:
        engine.dispose()


def test_notification_settings_in_the_browser(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    smtp = SmtpServer(tmp_path)
    config = notify_config(tmp_path / "webui", smtp)
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    web = WebuiProcess(config)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(15_000)
                page.on("dialog", lambda d: d.accept())
                _login(page, web.url, ALICE, PASSWORD)
                page.goto(f"{web.url}/settings")
                page.click("text=Notifications")
                # The defaults: every event, 30 and 5 minutes, by mail.
                for n in Notice:
                    assert page.is_checked(f"#event-{n.value}"), n
                assert page.input_value("#warn-minutes") == "30, 5" and page.is_checked("#notify-email")

                page.uncheck(f"#event-{Notice.NODE_BROKEN.value}")
                page.fill("#warn-minutes", "45, ten")
                page.click("#notify-form button[type=submit]")
                page.wait_for_selector("text=Warnings: 'ten' is not a number of minutes")
                page.fill("#warn-minutes", "45, 10")
                page.uncheck(f"#event-{Notice.NODE_BROKEN.value}")
                page.fill("#webhook-url", "http://127.0.0.1:9/hook")
                page.click("#notify-form button[type=submit]")
                page.wait_for_selector("text=resolves to a private or loopback address")
                assert _prefs(config, ALICE).webhook_url == ""

                # The administrator allows the host (keyboard only: Tab to the button, Enter).
                admin = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                admin.set_default_timeout(15_000)
                _login(admin, web.url, ADMIN_EMAIL, ADMIN_PASSWORD)
                admin.click("text=(admin) Notifications")
                admin.fill("#webhook-hosts", "127.0.0.1\n*.example.org")
                admin.focus("#webhook-hosts")
                admin.keyboard.press("Tab")
                admin.keyboard.press("Enter")
                admin.wait_for_selector("text=Webhooks' allowed hosts saved (2)")
                assert "127.0.0.1:9" not in admin.content()
                admin.fill("#smtp-password", "new-smtp-secret")
                admin.click("#smtp-password-form button[type=submit]")
                admin.wait_for_selector("text=SMTP password saved (encrypted).")
                assert admin.inner_text("#smtp-password-state") == "set (encrypted)"
                assert "new-smtp-secret" not in admin.content()
                SHOTS.mkdir(parents=True, exist_ok=True)
                admin.screenshot(path=str(SHOTS / "admin_notifications.png"), full_page=True)

                page.goto(f"{web.url}/settings?tab=notifications")
                page.fill("#warn-minutes", "45, 10")
                page.uncheck(f"#event-{Notice.NODE_BROKEN.value}")
                page.fill("#webhook-url", "http://127.0.0.1:9/hook")
                page.click("#notify-form button[type=submit]")
                secret = page.inner_text("#webhook-secret")
                assert secret.startswith("whsec_") and len(secret) > 30
                prefs = _prefs(config, ALICE)
                assert prefs.webhook_url == "http://127.0.0.1:9/hook" and prefs.has_secret
                assert prefs.warn_minutes == (45, 10) and Notice.NODE_BROKEN not in prefs.events
                page.screenshot(path=str(SHOTS / "settings_notifications.png"), full_page=True)
                # Shown once: the page again does not hold it.
                page.goto(f"{web.url}/settings?tab=notifications")
                assert secret not in page.content() and page.input_value("#warn-minutes") == "45, 10"

                phone = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
                _login(phone, web.url, ALICE, PASSWORD)
                phone.goto(f"{web.url}/settings?tab=notifications")
                width = phone.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"the page is {width} px wide at 390 px"
                phone.screenshot(path=str(SHOTS / "phone_settings_notifications.png"), full_page=True)
            finally:
                browser.close()
    finally:
        web.stop()
        smtp.stop()
