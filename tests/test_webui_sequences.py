"""Ordinary sequences of actions in headless Chromium, each one a defect of issue 10 first seen
failing: two bookings in a row with a filter change in between, the calendar from the keyboard, the
environment factory's retry, the progress shown, times in the viewer's zone, and two runs
configured separately (the site: helpers/sequences_fixtures.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from helpers.sequences_fixtures import (
    Site,
    add_filter,
    booked_nodes,
    new_user,
    open_page,
    set_node_attrs,
)
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import book_on, deployed_on, reservation

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# ---------------------------------------------------------------- 1. Reserve books what the panel shows


def test_two_bookings_with_a_filter_change_in_between(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    # First booking: two Pis picked by clicking their names.
    for n in ("pi-1", "pi-2"):
        page.click(f'.cal-row[data-key="{site.rpi_id}/{n}"] .cal-name .node')
    first_summary = page.locator("#b-summary").all_inner_texts()  # read now, checked below
    page.fill("#b-bin", "pis")
    page.click("#b-submit")
    assert booked_nodes(page) == ["pi-1", "pi-2"]

    # A third Pi clicked, then the user changes their mind: big servers by filter, and a count typed.
    page.click(f'.cal-row[data-key="{site.rpi_id}/pi-3"] .cal-name .node')
    add_filter(page, "type", "=", "g5k")
    add_filter(page, "cores", ">=", "16")
    page.fill("#b-count", "2")
    selected_then = page.inner_text("#sel-count")
    summary = page.locator("#b-summary").all_inner_texts()
    page.fill("#b-bin", "servers")
    page.evaluate("document.getElementById('booking-result').textContent = ''")
    page.click("#b-submit")
    booked = booked_nodes(page)

    # Exactly what the panel showed was booked: two big servers; no Pi again, pi-3 not at all.
    pis = sorted(r["node"] for r in site.mine(site.rpi, email))
    servers = sorted(r["node"] for r in site.mine(site.g5k, email))
    assert pis == ["pi-1", "pi-2"], (pis, page.inner_text(".booking-result"))
    assert len(servers) == 2 and "grisou-1" not in servers, servers  # grisou-1: 8 cores only
    assert booked == servers
    # What the panel said each time: the clicked nodes by name, then the count and the filters,
    # naming pi-3 as left out (the filters hide it, so it left the selection).
    clicked = "the 2 node(s) you clicked: pi-1 (rpi-lab), pi-2 (rpi-lab)"
    assert first_summary and clicked in first_summary[0], first_summary
    assert selected_then == "0"
    counted = "Reserve will book 2 node(s) matching type is g5k AND cores ≥ 16"
    assert summary and counted in summary[0], summary
    assert "pi-3 (rpi-lab)" in summary[0]
    # Booked nodes leave the selection: they show as "yours" in the calendar.
    page.wait_for_function("() => document.getElementById('sel-count').textContent === '0'")
    assert page.locator(".cal-row.selected").count() == 0

    # Clicking a node after a count request switches the request back to the clicked nodes.
    spare = ({"grisou-2", "grisou-3", "grisou-4"} - set(booked)).pop()
    page.click(f'.cal-row[data-key="{site.g5k_id}/{spare}"] .cal-name .node')
    page.wait_for_function("() => document.getElementById('b-summary').dataset.mode === 'selected'")
    assert page.locator("#b-mode-selected").is_checked()
    page.context.close()


def test_calendar_selection_from_the_keyboard(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    pick = page.locator(f'.cal-row[data-key="{site.rpi_id}/pi-4"] .pick')
    pick.focus()
    page.keyboard.press("Enter")
    assert pick.get_attribute("aria-pressed") == "true"
    assert page.inner_text("#sel-count") == "1"
    page.keyboard.press("Space")
    assert pick.get_attribute("aria-pressed") == "false"
    page.keyboard.press("Space")
    # Tab goes from a node to its properties button, then on to the next node.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('info')")
    page.keyboard.press("Enter")
    page.locator(".props-pop").wait_for()
    page.keyboard.press("Escape")
    assert page.locator(".props-pop").count() == 0
    page.fill("#b-bin", "keys")
    page.locator("#b-submit").focus()
    page.keyboard.press("Enter")
    assert booked_nodes(page) == ["pi-4"]
    page.context.close()


# ---------------------------------------------------------------- 2. forms keep what was entered


def test_environment_factory_retry_after_a_refused_name_saves_the_chosen_node(
    site: Site, browser: Any
) -> None:
    from piseduce.agent.models import Environment
    from piseduce.config import load_agent_config
    from piseduce.db import make_engine, session_factory

    email = new_user(site)
    first = deployed_on(site.rpi, email, "pi-5")
    chosen = deployed_on(site.rpi, email, "pi-6")
    engine = make_engine(load_agent_config(site.rpi.config, check_files=False).database_url)
    with session_factory(engine)() as s, s.begin():
        s.add(Environment(name="taken-env", image="taken.img.gz"))
    engine.dispose()

    page = open_page(browser, site, email)
    page.goto(f"{site.url}/env-factory")
    page.select_option("#ef-node", f"{site.rpi_id}:{chosen}")
    # A name the agent's rule refuses never leaves the browser (the field has the same pattern).
    page.fill("#ef-name", "../not a name")
    assert page.evaluate("document.getElementById('ef-name').validity.patternMismatch")
    # A name the agent refuses (taken): the page comes back with the reason and what was entered.
    page.fill("#ef-name", "taken-env")
    page.click("#ef-form button[type=submit]")
    page.locator("#ef-form .flash.error >> text=taken-env already exists").wait_for()
    assert page.input_value("#ef-node") == f"{site.rpi_id}:{chosen}"
    assert page.input_value("#ef-name") == "taken-env"
    # The retry with another name saves pi-6, the node chosen, not the first of the list.
    page.fill("#ef-name", "my-env")
    page.click("#ef-form button[type=submit]")
    page.locator(".flash.ok >> text=pi-6 is being saved as the environment my-env").wait_for()

    def saved() -> bool:
        events = reservation(site.rpi, email, chosen)["events"]
        return "register_env finished" in [e["message"] for e in events]

    wait_until_sync(saved, timeout=30)
    untouched = [e["message"] for e in reservation(site.rpi, email, first)["events"]]
    assert not any("saving" in m for m in untouched), untouched
    page.context.close()


# ---------------------------------------------------------------- 3. progress shown as it comes


def test_manage_shows_the_agents_progress_as_it_comes(site: Site, browser: Any) -> None:
    email = new_user(site)
    # The third of four steps hangs once its work is done: the agent says 75 % of the process.
    set_node_attrs(site.rpi, "pi-7", behavior="hang", behavior_step="install")
    rid = book_on(site.rpi, email, ["pi-7"], bin="progress")[0]
    try:
        r = site.api(site.rpi, "POST", f"/api/reservations/{rid}/deploy", email, json={"environment": "tiny"})
        assert r.status_code == 202, r.text
        def hanging() -> dict[str, Any] | None:
            x = reservation(site.rpi, email, rid)
            return x if x["step"] == "install" and x["progress"] > 50 else None

        res = wait_until_sync(hanging, timeout=30)
        assert (res["step_index"], res["step_count"], res["progress"]) == (2, 4, 75)
        page = open_page(browser, site, email)
        page.goto(f"{site.url}/manage")
        card = page.locator('.node-card[data-node="pi-7"]')
        card.locator(".live[data-status=deploying]").wait_for()
        assert card.locator(".pct").inner_text() == "75"
        assert card.locator(".progress > div").get_attribute("style") == "width:75%"
        assert "(step 3/4)" in card.locator(".step").inner_text()
        page.context.close()
    finally:
        site.api(site.rpi, "POST", f"/api/reservations/{rid}/destroy", email)
        set_node_attrs(site.rpi, "pi-7", behavior="ok")


# ---------------------------------------------------------------- 5. times in the viewer's zone


def test_messages_are_in_the_viewers_time_zone(site: Site, browser: Any) -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/Montreal")
    other, email = new_user(site), new_user(site)
    # Someone holds pi-9 tomorrow 14:00-16:00 UTC.
    t0 = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(hour=14, minute=0, second=0, microsecond=0)
    book_on(site.rpi, other, ["pi-9"], start=t0.isoformat().replace("+00:00", "Z"), hours=2)
    page = open_page(browser, site, email, tz="America/Montreal")
    page.goto(f"{site.url}/reserve")
    # The user asks for pi-9 at 15:00 UTC, typed in their own zone (10:00 or 11:00 in Montreal).
    asked = (t0 + dt.timedelta(hours=1)).astimezone(zone)
    page.click(f'.cal-row[data-key="{site.rpi_id}/pi-9"] .cal-name .node')
    page.check("input[name=when][value=later]")
    page.fill("#b-local", asked.strftime("%Y-%m-%dT%H:%M"))
    page.click("#b-submit")
    refused = page.locator(".booking-result .refused").inner_text()
    # The booking it collides with, in the viewer's zone, written as the pages write times (en-US:
    # "Tue, Dec 01, 09:00 AM"); no UTC anywhere on the page.
    local_start = t0.astimezone(zone).strftime("%a, %b %d, %I:%M %p")
    local_end = (t0 + dt.timedelta(hours=2)).astimezone(zone).strftime("%a, %b %d, %I:%M %p")
    assert f"booked from {local_start} to {local_end}" in refused, refused
    assert asked.strftime("%I:%M %p") not in refused, refused
    assert "UTC" not in page.inner_text("main"), page.inner_text("main")

    # Extend: the result gives the new end, in the viewer's zone.
    rid = deployed_on(site.rpi, email, "pi-10")
    end = dt.datetime.fromisoformat(reservation(site.rpi, email, rid)["end"].replace("Z", "+00:00"))
    page.goto(f"{site.url}/manage")
    card = page.locator('.node-card[data-node="pi-10"]')
    card.locator(".live[data-status=deployed]").wait_for()
    card.locator("button.node-action[data-action=extend]").click()
    new_end = (end + dt.timedelta(hours=1)).astimezone(zone)
    ends = new_end.strftime("%a, %b %d, %I:%M %p")
    page.locator(f"#action-result .flash.ok >> text=now ends {ends}").wait_for()
    card.locator("details summary").click()
    card.locator(".events li >> text=booked by").wait_for()
    assert "UTC" not in page.inner_text("main"), page.inner_text("main")
    site.api(site.rpi, "POST", f"/api/reservations/{rid}/destroy", email)
    page.context.close()


# ---------------------------------------------------------------- 4. Configure: one run at a time


def reserve_in_page(
    page: Any, site: Site, nodes: list[str], bin_name: str, start: dt.datetime | None
) -> None:
    page.goto(f"{site.url}/reserve")
    for n in nodes:
        page.click(f'.cal-row[data-key="{site.rpi_id}/{n}"] .cal-name .node')
    if start is not None:
        page.check("input[name=when][value=later]")
        page.fill("#b-local", start.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#b-duration", "1")
    page.fill("#b-bin", bin_name)
    page.click("#b-submit")
    page.wait_for_selector(".booking-result")
    assert booked_nodes(page) == sorted(nodes), page.inner_text(".booking-result")


def test_two_reservations_with_different_bins_and_starts_are_configured_separately(
    site: Site, browser: Any
) -> None:
    from zoneinfo import ZoneInfo

    email = new_user(site)
    page = open_page(browser, site, email)
    tomorrow = (dt.datetime.now(ZoneInfo("Europe/Paris")) + dt.timedelta(days=1)).replace(
        hour=8, minute=0, second=0, microsecond=0
    )
    reserve_in_page(page, site, ["pi-3"], "run-a", None)
    reserve_in_page(page, site, ["pi-3", "pi-4"], "run-b", tomorrow)

    page.goto(f"{site.url}/configure")
    groups = page.locator("section.group")
    assert groups.count() == 2
    # Each group keeps the bin typed at Reserve (stored on its reservations), soonest first.
    assert page.input_value("#bin-0") == "run-a" and page.input_value("#bin-1") == "run-b"
    assert groups.nth(0).locator(".card").count() == 1 and groups.nth(1).locator(".card").count() == 2
    # Tomorrow's run is configured later: its group is unticked; Deploy is also at the bottom.
    groups.nth(1).locator(".tick-group").uncheck()
    assert page.inner_text("#deploy-bottom") == "Deploy the 1 ticked node(s)"
    groups.nth(0).locator('[data-field="environment"] select').select_option("big")
    page.click("#deploy-bottom")
    page.wait_for_url(f"{site.url}/manage")
    page.locator(".flash.ok >> text=Deployment started on 1 node(s) of bin run-a.").wait_for()

    def by_bin() -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for r in site.mine(site.rpi, email):
            out.setdefault(r["bin"], []).append((r["node"], r["status"]))
        return {k: sorted(v) for k, v in out.items()}

    now = by_bin()
    assert [n for n, _ in now["run-a"]] == ["pi-3"] and now["run-a"][0][1] != "configuring", now
    assert now["run-b"] == [("pi-3", "configuring"), ("pi-4", "configuring")], now

    # Later: tomorrow's run alone, under its own bin, with its own environment.
    page.goto(f"{site.url}/configure")
    assert page.locator("section.group").count() == 1
    assert page.input_value("#bin-0") == "run-b"
    first = page.locator(".card").first
    first.locator('[data-field="environment"] select').select_option("tiny")
    first.locator(".apply-all").click()
    page.click("#deploy")
    page.wait_for_url(f"{site.url}/manage")
    later = by_bin()
    assert later["run-b"] == [("pi-3", "scheduled"), ("pi-4", "scheduled")], later
    mine = site.mine(site.rpi, email)
    params = {r["node"]: r["params"].get("environment") for r in mine if r["bin"] == "run-b"}
    assert params == {"pi-3": "tiny", "pi-4": "tiny"}
    assert [n for n, _ in later["run-a"]] == ["pi-3"]
    for r in site.mine(site.rpi, email):
        site.api(site.rpi, "POST", f"/api/reservations/{r['id']}/destroy", email)
    page.context.close()
