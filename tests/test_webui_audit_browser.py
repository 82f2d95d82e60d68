"""(admin) Audit in Chromium, against `piseduce webui serve`: a wrong password then a login made in
the browser are the newest rows (with the browser's address, times in the viewer's zone), the
filters used from the keyboard, the export link, and the page at 1400 px (the admin guide's
screenshot) and at 390 px (nothing off screen, every cell labelled)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.browser_helpers import ARGS, CHROMIUM, SHOTS, hidden_table_cells, table_buttons_off_screen
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import WebuiProcess, add_user, write_webui_config

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def seed(config: Path) -> None:
    """Events of a morning on a testbed, written as the routes write them (audit.record)."""
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui import audit
    from piseduce.webui.models import AuditEvent

    engine = make_engine(load_webui_config(config).database_url)
    carol = audit.Who(None, "carol@example.org", "192.0.2.10")
    admin = audit.Who(1, ADMIN_EMAIL, "198.51.100.7")
    approved = audit.Who(2, "carol@example.org", "192.0.2.10")
    events = [
        (carol, "signup", ("user", 2), {}),
        (admin, "user.approve", ("user", 2), {"email": "carol@example.org"}),
        (approved, "login", ("user", 2), {}),
        (approved, "token.create", ("token", 1), {"name": "ci runner", "scope": "write"}),
        (approved, "ssh_key.add", ("user", 2), {"added": 1}),
        (admin, "agent.add", ("agent", 1), {"name": "rpi-lab", "host": "10.0.0.2", "port": 8090}),
        (admin, "port.power", ("port", "rpi-lab/poe-1/3"), {"state": "off", "node": "pi-3"}),
        (admin, "reservation.destroy", ("reservation", "rpi-lab/41"), {"owner": "carol@example.org",
                                                                       "node": "pi-3"}),
    ]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    try:
        with write_session(session_factory(engine)) as s:
            for who, action, target, detail in events:
                audit.record(s, who, action, target, detail)
            s.flush()
            for i, row in enumerate(s.query(AuditEvent).order_by(AuditEvent.id)):
                row.at = start + dt.timedelta(minutes=17 * i)  # spread over the morning
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    cfg = write_webui_config(tmp_path_factory.mktemp("audit") / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    seed(cfg)
    with contextlib.ExitStack() as started:
        webui = WebuiProcess(cfg)
        started.callback(webui.stop)
        yield webui.url


@pytest.fixture(scope="module")
def browser(served: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def tab_to(page: Any, element_id: str) -> None:
    """Press Tab until the element has the focus (a datetime field takes a Tab per part)."""
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == element_id:
            return
    pytest.fail(f"#{element_id} is not reachable with Tab")


def _no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_the_audit_page_from_the_keyboard_at_1400_and_390_px(served: str, browser: Any) -> None:
    ctx = browser.new_context(timezone_id="Asia/Tokyo", viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{served}/login")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    page.wait_for_selector(".flash.error, [role=alert], .error")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{served}/reserve")

    page.goto(f"{served}/admin/audit")
    rows = page.locator("#audit-events tr[data-event]")
    assert rows.count() == 10
    newest, failed = rows.nth(0), rows.nth(1)
    assert newest.get_attribute("data-action") == "login" and ADMIN_EMAIL in newest.inner_text()
    assert "127.0.0.1" in newest.inner_text()
    assert failed.get_attribute("data-action") == "login.failed" and ADMIN_EMAIL in failed.inner_text()
    assert "not-the-password" not in page.content()
    # Times in the viewer's zone (Tokyo, UTC+9), not in UTC.
    utc = newest.locator("time").get_attribute("data-utc")
    assert utc is not None
    shown = newest.locator("time").inner_text()
    at = dt.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    tokyo = at.astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert tokyo.strftime("%I:%M").lstrip("0") in shown.replace(" 0", " "), (utc, shown)
    assert page.locator("a.active[href='/admin/audit']").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "admin_audit.png"), full_page=False)

    # The filters from the keyboard: the actor box, Tab to Action, choose, Enter.
    page.focus("#f-actor")
    page.keyboard.type("carol")
    page.keyboard.press("Enter")
    page.wait_for_url("**/admin/audit?actor=carol*")
    texts = page.locator("#audit-events tr[data-event]").all_inner_texts()
    assert len(texts) == 4 and all("carol@example.org" in t for t in texts)
    page.focus("#f-actor")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-action"
    page.select_option("#f-action", "token.create")  # what the arrow keys choose
    tab_to(page, "audit-show")
    page.keyboard.press("Enter")
    page.wait_for_url("**action=token.create*")
    assert page.locator("#audit-events tr[data-event]").count() == 1
    # The export link is reached with Tab and exports what is shown.
    tab_to(page, "audit-export")
    href = page.get_attribute("#audit-export", "href")
    assert href is not None
    answer = page.request.get(f"{served}{href}")
    lines = [json.loads(x) for x in answer.text().splitlines()]
    assert [e["action"] for e in lines] == ["token.create"] and lines[0]["detail"]["name"] == "ci runner"

    # A phone: every row, cell and link within the screen, each cell labelled by its column.
    page.set_viewport_size({"width": 390, "height": 900})
    page.goto(f"{served}/admin/audit")
    page.wait_for_selector("#audit-events")
    assert _no_horizontal_scroll(page)
    assert hidden_table_cells(page) == []
    assert table_buttons_off_screen(page) == []
    assert page.locator("#f-actor").bounding_box()["width"] <= 390  # type: ignore[index]
    ctx.close()
