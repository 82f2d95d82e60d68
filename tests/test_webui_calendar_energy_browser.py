"""Settings > Calendar and Manage's energy line, in headless Chromium (issue 17): the calendar URL
is shown once, works in a real parser, is replaced by Regenerate (the old one then a 404) and
gone with Revoke; a running Raspberry Pi reservation shows what its node drew so far (the site:
helpers/sequences_fixtures.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import icalendar
import pytest
from sqlalchemy import update

from helpers.browser_helpers import SHOTS
from helpers.sequences_fixtures import Site, new_user, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_calendar_url_is_made_shown_once_regenerated_and_revoked(site: Site, browser: Any) -> None:
    email = new_user(site)
    r = site.api(
        site.rpi,
        "POST",
        "/api/reservations",
        email,
        json={"filters": [{"nodes": ["pi-8"]}], "start": "now", "duration_hours": 1, "bin": "cal"},
    )
    assert r.status_code == 201, r.text
    page = open_page(browser, site, email, width=390)
    page.goto(f"{site.url}/settings?tab=calendar")
    assert "No calendar URL" in page.inner_text("#feed-state")
    page.locator("#feed-make").focus()
    page.keyboard.press("Enter")
    url = page.inner_text("#feed-url").strip()
    assert url.startswith(f"{site.url}/calendar/pcf_") and url.endswith(".ics"), url
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "settings_calendar.png"))
    feed = httpx.get(url, timeout=20)
    assert feed.status_code == 200, feed.text
    (event,) = icalendar.Calendar.from_ical(feed.text).walk("VEVENT")
    assert "Nodes: pi-8" in str(event["DESCRIPTION"]) and "Bin: cal" in str(event["DESCRIPTION"])
    page.reload()
    assert page.locator("#feed-url").count() == 0  # shown once
    assert "A calendar URL is active" in page.inner_text("#feed-state")
    page.click("#feed-make")  # Regenerate (the confirmation is accepted)
    new_url = page.inner_text("#feed-url").strip()
    assert new_url != url
    assert httpx.get(url, timeout=20).status_code == 404
    assert httpx.get(new_url, timeout=20).status_code == 200
    page.click("#feed-revoke")
    page.wait_for_url("**/settings?tab=calendar")
    assert httpx.get(new_url, timeout=20).status_code == 404
    page.context.close()


def test_manage_shows_the_energy_a_running_reservation_drew(site: Site, browser: Any) -> None:
    from piseduce.agent.models import Reservation, Sample
    from piseduce.db import make_engine, session_factory, write_session

    email = new_user(site)
    r = site.api(
        site.rpi,
        "POST",
        "/api/reservations",
        email,
        json={"filters": [{"nodes": ["pi-10"]}], "start": "now", "duration_hours": 2, "bin": "watts"},
    )
    assert r.status_code == 201, r.text
    rid = r.json()["reservations"][0]["id"]
    # As if it had run for 40 minutes at 4.2 W, then 5.4 W (the monitor's PoE samples).
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=40)
    engine = make_engine(f"sqlite:///{site.rpi.folder / 'agent.db'}")
    try:
        sessions = session_factory(engine)
        with write_session(sessions) as s:
            s.execute(update(Reservation).where(Reservation.id == rid).values(start=start, status="deployed"))
            s.add_all(
                Sample(
                    time=start + dt.timedelta(minutes=m),
                    kind="power",
                    subject="pi-10",
                    value=4.2 if m < 20 else 5.4,
                )
                for m in range(0, 41, 5)
            )
    finally:
        engine.dispose()
    page = open_page(browser, site, email)
    page.goto(f"{site.url}/manage")
    card = page.locator('.node-card[data-node="pi-10"]')
    line = card.locator(".energy")
    line.wait_for()
    text = line.inner_text()
    assert text.startswith("Energy so far: ") and "Wh" in text and "peak 5.4 W" in text, text
    SHOTS.mkdir(parents=True, exist_ok=True)
    card.screenshot(path=str(SHOTS / "manage_energy.png"))
    page.context.close()
