"""The Reserve calendar's pages in Chromium: paging through a site of 250 nodes, a filter applied
by the server across pages (back to its first page), and the clicked nodes kept meanwhile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.browser_helpers import ARGS, CHROMIUM
from helpers.constants import TOKEN
from helpers.sequences_fixtures import add_filter
from helpers.webui_fixtures import (
    WebuiProcess,
    add_user,
    fake_agent_app,
    register_agent,
    threaded_app,
    write_webui_config,
)

sync_api = pytest.importorskip("playwright.sync_api")
USER, PASSWORD = "alice@example.org", "alice-password-1"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    # The in-test agent (250 nodes, a thread of this process) can take over the helpers' 1 s
    # deadline on a loaded machine (CI: page 2 never came): deadlines are not what is tested here.
    cfg = write_webui_config(tmp_path / "webui", health_check_seconds=3600, agent_timeout_seconds=5.0)
    add_user(cfg, USER, PASSWORD)
    with threaded_app(fake_agent_app("lab", nodes=250, delay=0, token=TOKEN)) as port:
        register_agent(cfg, "lab", port, "raspberry")
        webui = WebuiProcess(cfg)
        try:
            yield webui.url
        finally:
            webui.stop()


def on_page(page: Any, n: int) -> None:
    """Waits until the calendar shows page `n` and htmx has settled it: until then its new buttons
    have no handlers yet (htmx binds them after its settle delay), so a key pressed or a click at
    once would do nothing (CI: a press right after the swap never turned the page)."""
    page.wait_for_function(
        "n => { const c = document.getElementById('calendar'); return c.dataset.page === n &&"
        " !c.classList.contains('htmx-added') && !c.classList.contains('htmx-settling') }",
        arg=str(n),
    )


def names(page: Any) -> list[str]:
    return list(page.locator(".cal-row[data-key]:not(.hidden) .pick .node").all_inner_texts())


def test_paging_and_filtering_a_big_calendar(web: str) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{web}/login")
        page.fill("#email", USER)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{web}/reserve")
        page.wait_for_load_state("networkidle")
        assert page.inner_text("#cal-page-words") == "nodes 1–100 of 250"
        assert names(page)[:3] == ["n-0", "n-1", "n-2"] and len(names(page)) == 100
        page.click("#cal-page-next")
        on_page(page, 2)
        assert names(page)[0] == "n-100" and len(names(page)) == 100
        page.click('.cal-row[data-key$="/n-101"] .cal-name .node')  # an RPI4B: odd numbers
        assert page.inner_text("#sel-count") == "1"
        # The filter is the server's: the first page of the 125 matches of the whole site.
        add_filter(page, "model", "=", "RPI4B")
        page.wait_for_function("() => document.getElementById('calendar').dataset.matching === '125'")
        on_page(page, 1)
        shown = names(page)
        assert len(shown) == 100 and all(int(n[2:]) % 2 for n in shown), shown[:5]
        assert page.inner_text("#match-count") == "125 of 250 nodes match"
        # The clicked node is still asked for, and shown as selected on its new page.
        assert page.get_attribute('.cal-row[data-key$="/n-101"] .pick', "aria-pressed") == "true"
        page.click("#cal-page-next")
        on_page(page, 2)
        assert len(names(page)) == 25 and page.inner_text("#cal-page-words") == "nodes 101–125 of 125"
        assert page.inner_text("#sel-count") == "1"  # selected on another page: still selected
        # A refresh of the calendar (every minute, after a booking) keeps the filter and the page.
        with page.expect_response(lambda r: "/reserve/calendar" in r.url and "filters=" in r.url):
            page.evaluate("htmx.trigger('#calendar', 'refresh')")
        page.wait_for_load_state("networkidle")
        assert page.get_attribute("#calendar", "data-page") == "2" and len(names(page)) == 25
        browser.close()


def test_a_filter_drops_a_clicked_node_of_another_page_and_paging_keeps_the_focus(web: str) -> None:
    """A node clicked on page 3 that a filter added on page 1 hides leaves the selection, and the
    panel says so (the rule of the booking panel: it books what it shows). Paging by keyboard to
    the last page keeps the focus on the calendar's paging buttons."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_context(viewport={"width": 390, "height": 900}).new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{web}/login")
        page.fill("#email", USER)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{web}/reserve")
        page.wait_for_load_state("networkidle")
        for n in (2, 3):
            page.focus("#cal-page-next")
            page.keyboard.press("Enter")
            on_page(page, n)
            page.wait_for_load_state("networkidle")
        # Page 3 is the last: Next is disabled, the focus is on Previous, not lost to the page.
        assert page.get_attribute("#cal-page-next", "disabled") is not None
        assert page.evaluate("document.activeElement.id") == "cal-page-prev"
        page.click('.cal-row[data-key$="/n-200"] .cal-name .node')  # even: not an RPI4B
        page.click('.cal-row[data-key$="/n-201"] .cal-name .node')  # odd: an RPI4B
        assert page.inner_text("#sel-count") == "2"
        for n in (2, 1):
            page.click("#cal-page-prev")
            on_page(page, n)
        add_filter(page, "model", "=", "RPI4B")
        page.wait_for_function("() => document.getElementById('calendar').dataset.matching === '125'")
        page.wait_for_load_state("networkidle")
        assert page.inner_text("#sel-count") == "1"
        asked = page.eval_on_selector_all("#sel-inputs input[name=node]", "els => els.map(e => e.value)")
        assert [a.rsplit("/", 1)[-1] for a in asked] == ["n-201"], asked
        summary = page.inner_text("#b-summary")
        assert "Unselected because the filters hide them: n-200" in summary, summary
        assert "n-201" in summary and "n-200 (" not in summary.split("Unselected")[0], summary
        browser.close()
