"""The Reserve page's "Find next free slot", in headless Chromium (issue 17): the button (or Enter on
it) fills the booking panel's start with the earliest start the agents answer, in the viewer's
zone, and Reserve then books exactly that; a request that never fits says why and what to do; the
panel works at 390 px (the site: helpers/sequences_fixtures.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from helpers.browser_helpers import SHOTS
from helpers.sequences_fixtures import Site, add_filter, booked_nodes, new_user, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
RPI4B = ["pi-1", "pi-3", "pi-5", "pi-7", "pi-9", "pi-11"]  # the site's RPI4B (4 GB)


def ceil_minute(t: dt.datetime) -> dt.datetime:
    floor = t.replace(second=0, microsecond=0)
    return floor if floor == t else floor + dt.timedelta(minutes=1)


def test_find_next_free_slot_fills_the_panel_and_reserve_books_it(site: Site, browser: Any) -> None:
    other = new_user(site)
    # Another user holds every RPI4B for two hours from now.
    r = site.api(
        site.rpi,
        "POST",
        "/api/reservations",
        other,
        json={"filters": [{"nodes": RPI4B}], "start": "now", "duration_hours": 2},
    )
    assert r.status_code == 201, r.text
    ends = dt.datetime.fromisoformat(r.json()["reservations"][0]["end"].replace("Z", "+00:00"))
    expected = ceil_minute(ends)  # the Pi lab's turnaround is 0 here
    email = new_user(site)
    page = open_page(browser, site, email, tz="America/New_York")
    add_filter(page, "model", "=", "RPI4B")
    page.fill("#b-count", "2")
    page.fill("#b-duration", "1.5")
    # From the keyboard: Tab to the button, Enter.
    page.locator("#b-find").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('b-slot').textContent.startsWith('Free')")
    said = page.inner_text("#b-slot")
    local = expected.astimezone(ZoneInfo("America/New_York"))
    assert page.locator("input[name=when][value=later]").is_checked()
    assert page.input_value("#b-local") == local.strftime("%Y-%m-%dT%H:%M"), said
    assert page.input_value("#b-duration") == "1.5"
    assert "press Reserve" in said and "pi-1" in said, said
    assert "from now" not in page.inner_text("#b-summary")
    SHOTS.mkdir(parents=True, exist_ok=True)  # the user guide's picture (./run docs-shots)
    page.locator("#book-form").screenshot(path=str(SHOTS / "reserve_next_slot.png"))
    page.click("#b-submit")
    got = booked_nodes(page)
    assert len(got) == 2 and set(got) <= set(RPI4B), got
    mine = site.mine(site.rpi, email)
    starts = {dt.datetime.fromisoformat(x["start"].replace("Z", "+00:00")) for x in mine}
    assert starts == {expected}, mine
    page.context.close()


def test_a_request_that_never_fits_says_what_to_do_at_390_px(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email, width=390)
    add_filter(page, "model", "=", "RPI4B")
    page.fill("#b-count", "7")  # there are 6
    before = page.input_value("#b-local")
    page.click("#b-find")
    page.wait_for_function("() => document.getElementById('b-slot').textContent.startsWith('No free slot')")
    said = page.inner_text("#b-slot")
    assert "only 6 available node(s) match model = RPI4B" in said and "fewer nodes" in said, said
    assert page.input_value("#b-local") == before  # nothing filled in
    box = page.locator("#b-find").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    page.context.close()
