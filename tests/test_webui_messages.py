"""What the pages say, in headless Chromium (issue 10's follow-up): a Configure error on the card it
is about, named by its node; action results that name the node, never a reservation id; times in
messages written as the pages write theirs (the site: helpers/sequences_fixtures.py)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from helpers.sequences_fixtures import Site, new_user, open_page, set_node_attrs
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import book_on, deployed_on, reservation

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGE_TIME = "%a, %b %d, %I:%M %p"  # how the pages write a time (en-US): Tue, Dec 01, 05:56 PM


def test_a_configure_error_shows_on_its_card_named_by_the_node(site: Site, browser: Any) -> None:
    email = new_user(site)
    book_on(site.rpi, email, ["pi-1", "pi-2"], bin="cards")
    page = open_page(browser, site, email)
    page.goto(f"{site.url}/configure")
    pi1, pi2 = (page.locator(f'.card[data-node="{n}"]') for n in ("pi-1", "pi-2"))
    # What the web UI refuses itself (a key that is not one), on the second card.
    pi2.locator("textarea[name$='ssh_keys_extra']").fill("not a public key")
    page.click("#deploy")
    page.locator(".card .err").first.wait_for()
    assert pi1.locator(".err").count() == 0
    err = pi2.locator(".err").inner_text()
    assert err.startswith("Not deployed: "), err
    banner = " ".join(page.locator(".flash.error").all_inner_texts())
    assert "pi-2 (rpi-lab): " in banner and "Nothing was deployed" in banner, banner
    assert "Node 2" not in page.inner_text("main")
    assert pi2.locator("textarea[name$='ssh_keys_extra']").input_value() == "not a public key"

    # What the agent refuses (an environment it does not have), on the first card, by name.
    pi2.locator("textarea[name$='ssh_keys_extra']").fill("")
    pi1.locator('[data-field="environment"] select').evaluate(
        "s => { const o = document.createElement('option'); o.value = o.textContent = 'huge';"
        " s.appendChild(o); s.value = 'huge'; }"
    )
    page.click("#deploy")
    pi1.locator(".err").wait_for()
    assert "choose one of tiny, big" in pi1.locator(".err").inner_text()
    banner = " ".join(page.locator(".flash.error").all_inner_texts())
    assert "pi-1 (rpi-lab): " in banner and "choose one of tiny, big" in banner, banner
    assert not re.search(r"reservation \d+", page.inner_text("main")), page.inner_text("main")
    # pi-2 was sent and deploys; pi-1 waits on the page with its reason.
    assert page.locator(".card").count() == 1
    page.context.close()


def test_action_results_name_the_node_and_write_times_as_the_pages_do(site: Site, browser: Any) -> None:
    zone = ZoneInfo("America/Montreal")
    email = new_user(site)
    rid = deployed_on(site.rpi, email, "pi-3")
    stuck = deployed_on(site.rpi, email, "pi-4")
    set_node_attrs(site.rpi, "pi-4", behavior="hang", behavior_step="wipe")
    try:
        r = site.api(site.rpi, "POST", f"/api/reservations/{stuck}/destroy", email)
        assert r.status_code == 202, r.text
        wait_until_sync(lambda: reservation(site.rpi, email, stuck)["status"] == "destroying", timeout=20)
        page = open_page(browser, site, email, tz="America/Montreal")
        page.goto(f"{site.url}/manage")
        card = page.locator('.node-card[data-node="pi-3"]')
        card.locator(".live[data-status=deployed]").wait_for()
        # Extend both: pi-3 gets an hour more; pi-4, being wiped, cannot be extended.
        for node in ("pi-3", "pi-4"):
            page.locator(f'.node-card[data-node="{node}"] input[name=sel]').check()
        page.select_option("#m-action", "extend")
        page.fill("#manage-form input[name=hours]", "1")
        page.click("#m-run")
        page.locator("#action-result .flash.error").wait_for()
        ok = page.locator("#action-result .flash.ok").inner_text()
        refused = page.locator("#action-result .flash.error").inner_text()
        assert refused.startswith("Extend: pi-4 on rpi-lab: pi-4 is destroying"), refused
        assert "reservation" not in refused, refused
        end = dt.datetime.fromisoformat(reservation(site.rpi, email, rid)["end"].replace("Z", "+00:00"))
        assert ok == f"Extend: pi-3 on rpi-lab: now ends {end.astimezone(zone).strftime(PAGE_TIME)}", ok
        # The same time, as the card writes it once the page has refreshed.
        card.locator("time.t").nth(1).wait_for()
        wait_until_sync(
            lambda: (
                card.locator("time.t")
                .nth(1)
                .get_attribute("data-utc")
                .startswith(end.strftime("%Y-%m-%dT%H:%M"))
            ),
            timeout=15,
        )
        assert card.locator("time.t").nth(1).inner_text() in ok
        page.context.close()
    finally:
        set_node_attrs(site.rpi, "pi-4", behavior="ok")
        site.api(site.rpi, "POST", f"/api/reservations/{rid}/destroy", email)


def test_a_name_field_refuses_other_characters_as_they_are_typed(site: Site, browser: Any) -> None:
    email = new_user(site)
    rid = deployed_on(site.rpi, email, "pi-6")
    page = open_page(browser, site, email)
    for path, field in (("/env-factory", "#ef-name"), ("/reserve", "#b-bin")):
        page.goto(f"{site.url}{path}")
        box = page.locator(field)
        said = page.locator(f"{field}-error")
        box.focus()
        page.keyboard.type("my/env")
        # Said at once, before any submit, naming the character refused.
        said.wait_for()
        assert "“/” is not allowed" in said.inner_text(), said.inner_text()
        assert box.get_attribute("aria-invalid") == "true"
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")  # "my"
        assert said.is_hidden() and box.get_attribute("aria-invalid") == "false", path
    site.api(site.rpi, "POST", f"/api/reservations/{rid}/destroy", email)
    page.context.close()
