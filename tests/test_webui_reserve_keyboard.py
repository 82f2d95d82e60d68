"""Reserve from the keyboard, in headless Chromium (issue 10's follow-up): tabbing through the
booking panel books what it said, focus stays on the control used when the calendar reloads, the
"Go to date" field loads a date once it is committed, and a count is asked only when typed (the
site: helpers/sequences_fixtures.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from helpers.sequences_fixtures import Site, add_filter, booked_nodes, new_user, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ACTIVE = "() => document.activeElement && (document.activeElement.id || document.activeElement.tagName)"


def summary(page: Any) -> str:
    return str(page.inner_text("#b-summary"))


def calendar_loads(page: Any) -> list[str]:
    """Every calendar request the page makes from now on (their URLs)."""
    seen: list[str] = []
    page.on("request", lambda r: "/reserve/calendar" in r.url and seen.append(r.url))
    return seen


def test_tabbing_through_the_booking_panel_books_what_it_said(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    page.click(f'.cal-row[data-key="{site.rpi_id}/pi-6"] .cal-name .node')
    said = summary(page)
    assert "the 1 node(s) you clicked: pi-6 (rpi-lab), from now" in said, said
    # From the first control of the panel to Reserve, one Tab at a time: merely passing through the
    # count and the date changes nothing, and the line says so at every stop.
    page.locator("#b-mode-selected").focus()
    stops = []
    for _ in range(30):
        page.keyboard.press("Tab")
        stops.append(page.evaluate(ACTIVE))
        assert summary(page) == said, (stops, summary(page))
        if stops[-1] == "b-submit":
            break
    assert {"b-count", "b-local", "b-submit"} <= set(stops), stops
    assert page.locator("#b-mode-selected").is_checked()
    assert page.locator("input[name=when][value=now]").is_checked()
    before = dt.datetime.now(dt.UTC)
    page.keyboard.press("Enter")
    assert booked_nodes(page) == ["pi-6"]
    (res,) = site.mine(site.rpi, email)
    start = dt.datetime.fromisoformat(res["start"].replace("Z", "+00:00"))
    assert res["node"] == "pi-6" and abs((start - before).total_seconds()) < 120, res
    assert site.mine(site.g5k, email) == []

    # A real change of value does switch: typing a count asks for that many nodes, typing a date
    # starts then; the line says it.
    page.locator("#b-count").focus()
    page.keyboard.type("2")
    assert page.locator("#b-mode-count").is_checked()
    assert "Reserve will book 2 node(s) matching any node" in summary(page), summary(page)
    local = page.locator("#b-local")
    local.focus()
    assert page.locator("input[name=when][value=now]").is_checked()  # focus alone: still now
    page.keyboard.press("ArrowUp")  # the first part of the date (the month) goes up by one
    assert page.locator("input[name=when][value=later]").is_checked()
    assert "from now" not in summary(page), summary(page)
    page.context.close()


def press_and_settle(page: Any, key: str) -> None:
    """Press `key` and wait until the calendar it reloads has settled: htmx wires the new buttons
    up only then (its settle step, 20 ms after the swap), so a key pressed sooner does nothing, a
    race a real keyboard user never loses but a test does on a busy machine."""
    page.evaluate("window.__settled = 0; document.addEventListener('htmx:afterSettle', "
                  "() => { window.__settled += 1; }, { once: true })")
    page.keyboard.press(key)
    page.wait_for_function("() => window.__settled > 0")


def test_focus_stays_on_the_day_buttons_when_the_calendar_reloads(site: Site, browser: Any) -> None:
    page = open_page(browser, site, new_user(site))
    day0 = page.get_attribute("#calendar", "data-day")
    nxt = page.locator(".cal-nav button", has_text="Next day")
    nxt.focus()
    press_and_settle(page, "Enter")
    assert page.get_attribute("#calendar", "data-day") != day0
    assert page.evaluate("document.activeElement.textContent").strip().startswith("Next day")
    press_and_settle(page, "Enter")  # once more: still there, a day later again
    day2 = (dt.date.fromisoformat(day0 or "") + dt.timedelta(days=2)).isoformat()
    assert page.get_attribute("#calendar", "data-day") == day2
    assert page.evaluate("document.activeElement.textContent").strip().startswith("Next day")
    # Back to Today with one Shift+Tab, and Space on it.
    page.keyboard.press("Shift+Tab")
    press_and_settle(page, "Space")
    assert page.get_attribute("#calendar", "data-day") == day0
    assert page.evaluate("document.activeElement.textContent").strip() == "Today"
    # A node's button keeps the focus too when the calendar refreshes by itself (every minute, or
    # after a booking).
    pick = page.locator(f'.cal-row[data-key="{site.rpi_id}/pi-3"] .pick')
    pick.focus()
    with page.expect_response(lambda r: "/reserve/calendar" in r.url):
        page.evaluate("htmx.trigger('#calendar', 'refresh')")
    page.wait_for_timeout(300)  # swapped and settled
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Select pi-3 on rpi-lab"
    page.context.close()


def test_go_to_date_loads_a_committed_date_only(site: Site, browser: Any) -> None:
    page = open_page(browser, site, new_user(site))
    loads = calendar_loads(page)
    box = page.locator("#cal-date")
    box.focus()
    page.keyboard.type("12052026")  # en-US: mm dd yyyy
    page.wait_for_timeout(500)
    assert loads == [], loads  # nothing while typing
    assert box.input_value() == "2026-12-05"
    page.keyboard.press("ArrowUp")  # the year is the part being typed: 2027
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowUp")  # the day: 06
    page.wait_for_timeout(300)
    assert loads == [] and box.input_value() == "2027-12-06", (loads, box.input_value())
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('calendar').dataset.day === '2027-12-06'")
    assert len(loads) == 1, loads
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'cal-date'")
    # Leaving the field commits what was typed too.
    page.keyboard.type("01022027")
    page.wait_for_timeout(300)
    assert len(loads) == 1 and box.input_value() == "2027-01-02", (loads, box.input_value())
    for _ in range(4):  # out of the field (Tab goes through its parts and its picker button first)
        page.keyboard.press("Tab")
        if page.evaluate(ACTIVE) != "cal-date":
            break
    page.wait_for_function("() => document.getElementById('calendar').dataset.day === '2027-01-02'")
    assert len(loads) == 2, loads
    # A date the calendars cannot show is refused in words, and nothing loads.
    box.focus()
    page.keyboard.type("01011999")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert len(loads) == 2 and page.get_attribute("#calendar", "data-day") == "2027-01-02"
    assert page.evaluate("document.getElementById('cal-date').validationMessage")
    page.context.close()


def test_a_count_is_asked_only_when_typed_and_the_bin_cleared_once_booked(
    site: Site, browser: Any
) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    # A filter with nothing clicked narrows the calendar; it does not ask for a node.
    add_filter(page, "type", "=", "g5k")
    assert page.locator("#b-mode-selected").is_checked()
    assert summary(page).startswith("Nothing to book yet"), summary(page)
    page.fill("#b-bin", "run-1")
    page.click("#b-submit")
    page.locator(".booking-result .refused").wait_for()
    assert site.mine(site.g5k, email) == [] and site.mine(site.rpi, email) == []
    # Choosing the count without a number asks for one; typing it books that many.
    page.check("#b-mode-count")
    assert "how many" in summary(page).lower(), summary(page)
    page.fill("#b-count", "1")
    assert "Reserve will book 1 node(s) matching type is g5k" in summary(page), summary(page)
    page.evaluate("document.getElementById('booking-result').textContent = ''")
    page.click("#b-submit")
    assert len(booked_nodes(page)) == 1
    assert len(site.mine(site.g5k, email)) == 1
    # Booked: the bin typed for it is not carried over to the next booking, nor the count.
    page.wait_for_function("() => document.getElementById('b-bin').value === ''")
    assert page.input_value("#b-count") == ""
    assert page.locator("#b-mode-selected").is_checked()
    assert "bin run-1" not in summary(page)
    page.context.close()


def test_the_first_page_shows_today_in_the_viewers_zone_when_utc_is_another_day(
    site: Site, browser: Any
) -> None:
    """The first page of a session is rendered in UTC, then redrawn in the browser's zone: the
    redraw must show the viewer's today, not the UTC day (a user in Paris at 00:30 saw yesterday,
    and "Today" then moved the calendar). A zone whose date differs from UTC's right now."""
    now = dt.datetime.now(dt.UTC)
    tz, offset = ("Etc/GMT-14", 14) if now.hour >= 10 else ("Etc/GMT+12", -12)
    local_today = (now + dt.timedelta(hours=offset)).date().isoformat()
    assert local_today != now.date().isoformat()
    page = open_page(browser, site, new_user(site), tz=tz)
    page.wait_for_function(f"() => document.getElementById('calendar').dataset.day === '{local_today}'")
    assert page.get_attribute("#cal-date", "value") == local_today
    # An explicit day in the address is kept by the redraw.
    page.goto(f"{site.url}/reserve?day={now.date().isoformat()}")
    page.wait_for_load_state("networkidle")
    assert page.get_attribute("#calendar", "data-day") == now.date().isoformat()
    page.context.close()
