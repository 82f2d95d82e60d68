"""Issue 10 in headless Chromium, for operators and small screens: an admin sees and acts on every
reservation and filters every list; every page fits a 390 px phone and a 1400 px screen (the site:
helpers/sequences_fixtures.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from helpers.constants import ADMIN_EMAIL
from helpers.sequences_fixtures import (
    Site,
    new_user,
    open_page,
)
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import book_on, deployed_on, reservation

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# ---------------------------------------------------------------- 7. admin oversight


def test_admin_sees_and_acts_on_every_reservation_and_filters_every_table(site: Site, browser: Any) -> None:
    owner = new_user(site)
    rid = deployed_on(site.rpi, owner, "pi-8")
    admin = open_page(browser, site, ADMIN_EMAIL)

    # Nodes: pi-8 is in use, by its owner, until its end; the search box finds it by owner.
    admin.goto(f"{site.url}/admin/nodes")
    row = admin.locator('[data-agent="rpi-lab"] tr[data-node="pi-8"]')
    assert row.locator(".badge.in-use").inner_text() == "in use"
    assert owner in row.locator(".usage").inner_text()
    free = admin.locator('[data-agent="rpi-lab"] tr[data-node="pi-3"] .badge')
    assert free.inner_text() == "available"
    admin.fill("#nodes-filter", owner)
    assert admin.locator("tr[data-node]:visible").count() == 1
    total = admin.locator("tr[data-node]").count()
    assert admin.locator("#nodes-filter ~ .filter-count").inner_text() == f"1 of {total} shown"
    admin.fill("#nodes-filter", "in use")
    visible = admin.locator("tr[data-node]:visible")
    assert visible.count() >= 1 and all("in use" in t for t in visible.all_inner_texts())

    # Manage: every user's reservations, with their owner; the admin acts on another user's node.
    admin.goto(f"{site.url}/manage")
    card = admin.locator(f'.node-card[data-node="pi-8"][data-owner="{owner}"]')
    card.locator(".live[data-status=deployed]").wait_for()
    assert owner in card.locator(".owner").inner_text()
    admin.fill("#manage-filter", owner)
    assert admin.locator(".node-card:visible").count() == 1
    admin.fill("#manage-filter", "")
    from helpers.browser_helpers import SHOTS

    SHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SHOTS / "admin_manage.png"))
    admin.fill("#manage-filter", owner)
    # The event log is opened first: the card leaves the page once the destroy has ended, which
    # on a loaded machine can come before a click made after the action.
    card.locator("details summary").click()
    card.locator(".events li").first.wait_for()
    card.locator("button.node-action[data-action=destroy]").click()
    admin.locator("#action-result .flash.ok >> text=Destroy: pi-8 on rpi-lab").wait_for()
    card.locator(".events li >> text=destroy requested by").wait_for()
    ending = ("destroying", "ended")
    wait_until_sync(lambda: reservation(site.rpi, owner, rid)["status"] in ending, timeout=20)

    # Every admin table has a search box that filters it.
    admin.goto(f"{site.url}/admin/users")
    admin.fill("#users-filter", owner)
    assert admin.locator("tr[data-email]:visible").all_inner_texts()[0].startswith(owner)
    assert admin.locator("tr[data-email]:visible").count() == 1
    for path, box, rows in (
        ("/admin/agents", "#agents-filter", "#agents tr[data-agent]"),
        ("/admin/switches", "#switches-filter", ".switch[data-switch]"),
        ("/admin/environments", "#envs-filter", "tr[data-env]"),
    ):
        admin.goto(f"{site.url}{path}")
        admin.fill(box, "no-such-thing-anywhere")
        assert admin.locator(f"{rows}:visible").count() == 0, path
    admin.goto(f"{site.url}/admin/agents")
    admin.fill("#agents-filter", "g5k")
    assert admin.locator("#agents tr[data-agent]:visible").all_inner_texts()[0].startswith("g5k-nancy")
    admin.context.close()


def test_every_find_box_finds_what_it_promises_and_only_that(site: Site, browser: Any) -> None:
    from helpers.browser_helpers import check_find_box

    owner = new_user(site)
    rid = book_on(site.rpi, owner, ["pi-5"], bin="findme-run")[0]
    r = site.api(site.rpi, "POST", f"/api/reservations/{rid}/deploy", owner, json={"environment": "tiny"})
    assert r.status_code == 202, r.text
    wait_until_sync(lambda: reservation(site.rpi, owner, rid)["status"] == "deployed", timeout=30)
    admin = open_page(browser, site, ADMIN_EMAIL)
    admin.goto(f"{site.url}/manage")
    card = admin.locator('.node-card[data-node="pi-5"]')
    card.locator(".live[data-status=deployed]").wait_for()
    assert check_find_box(admin, "#manage-filter") == {"owner", "node", "agent", "status", "bin"}
    # The bin of a run finds its cards; the connection details shown on them ("ssh root@pi-5")
    # are not a field the box names.
    admin.fill("#manage-filter", "findme-run")
    assert admin.locator(".node-card:visible").count() == 1 and card.is_visible()
    assert "root@pi-5" in card.inner_text()
    admin.fill("#manage-filter", "root")
    assert admin.locator(".node-card:visible").count() == 0
    for path, box, fields in (
        ("/admin/users", "#users-filter", {"email", "state"}),
        ("/admin/agents", "#agents-filter", {"name", "type", "site", "address", "state"}),
        ("/admin/nodes", "#nodes-filter", {"name", "status", "owner", "ip", "property"}),
    ):
        admin.goto(f"{site.url}{path}")
        assert check_find_box(admin, box) == fields, path
    site.api(site.rpi, "POST", f"/api/reservations/{rid}/destroy", owner)
    admin.context.close()


# ---------------------------------------------------------------- 8. phones and wide screens

USER_PAGES = ("/reserve", "/configure", "/manage", "/monitoring", "/env-factory", "/settings",
              "/settings?tab=account", "/settings?tab=password", "/settings?tab=ssh", "/settings?tab=g5k",
              "/settings?tab=iotlab", "/settings?tab=tokens")  # fmt: skip
# Between the phone and the wide screen: a small tablet, still with stacked tables.
TABLET = 700
ADMIN_PAGES = ("/manage", "/admin/agents", "/admin/users", "/admin/nodes", "/admin/switches",
               "/admin/environments")  # fmt: skip
OVERFLOW = """() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
  wide: [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    const scrolls = e.closest('.cal-grid, .table-wrap, table, .conn');
    return r.width > 0 && r.right > window.innerWidth + 1 && !scrolls;
  }).slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)})"""


def no_overflow(page: Any, where: str) -> None:
    from helpers.browser_helpers import hidden_table_cells, table_buttons_off_screen

    got = page.evaluate(OVERFLOW)
    assert got["scroll"] <= got["inner"], (where, got)
    # Tables may scroll sideways inside their frame, but never hide a button that way.
    assert table_buttons_off_screen(page) == [], where
    # Every row of every table shows its text (stacked on a narrow screen, labelled by its column).
    assert hidden_table_cells(page) == [], where


def fits(page: Any, where: str, width: int) -> None:
    """no_overflow at this width and, from a phone, at a small tablet's too."""
    no_overflow(page, f"{where} at {width} px")
    if width < TABLET:
        page.set_viewport_size({"width": TABLET, "height": 900})
        no_overflow(page, f"{where} at {TABLET} px")
        page.set_viewport_size({"width": width, "height": 900})


@pytest.mark.parametrize("width", [390, 1400])
def test_every_page_fits_the_screen(site: Site, browser: Any, width: int) -> None:
    from helpers.browser_helpers import SHOTS

    email = new_user(site)
    node = "pi-11" if width == 390 else "pi-12"
    rid = deployed_on(site.rpi, email, node)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(microsecond=0)
    book_on(site.rpi, email, [node], start=later.isoformat().replace("+00:00", "Z"), bin="later")
    # A Grid'5000 card on Configure: its help text carries a long URL, which must wrap.
    g5k_node = "grisou-1" if width == 390 else "grisou-2"
    (g5k_rid,) = book_on(site.g5k, email, [g5k_node], start=later.isoformat().replace("+00:00", "Z"))
    page = open_page(browser, site, email, width=width)
    failed: list[str] = []  # every request of every page answers (the favicon included)
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path in USER_PAGES:
        page.goto(f"{site.url}{path}")
        page.wait_for_load_state("networkidle")
        fits(page, path, width)
        if path == "/configure":
            assert page.locator(f'.card[data-node="{g5k_node}"] .help:has-text("grid5000.fr")').count() == 1
        name = {"/reserve": "reserve", "/configure": "configure", "/manage": "manage"}.get(path)
        if name and width == 390:
            page.screenshot(path=str(SHOTS / f"phone_{name}.png"), full_page=True)
    assert failed == [], failed
    icon = httpx.get(f"{site.url}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\0\0\1\0"
    # The menu is above the page on a phone, beside it on a wide screen.
    side = page.locator("aside.side").bounding_box()
    main = page.locator("main").bounding_box()
    assert side and main
    if width == 390:
        assert side["width"] == 390 and main["y"] >= side["y"] + side["height"] - 1 and main["width"] == 390
    else:
        assert side["width"] < 300 and main["x"] >= side["width"] - 1
    # Manage: the action bar does not cover the cards (it stays in the flow on a phone).
    page.goto(f"{site.url}/manage")
    card = page.locator('.node-card[data-node="pi-11"], .node-card[data-node="pi-12"]').first
    card.locator(".live[data-status=deployed]").wait_for()
    card.scroll_into_view_if_needed()
    bar, box = page.locator("#manage-form").bounding_box(), card.bounding_box()
    assert bar and box and (bar["y"] >= box["y"] + box["height"] or bar["y"] + bar["height"] <= box["y"])
    page.context.close()

    admin = open_page(browser, site, ADMIN_EMAIL, width=width)
    for path in ADMIN_PAGES:
        admin.goto(f"{site.url}{path}")
        admin.wait_for_load_state("networkidle")
        fits(admin, path, width)
    admin.context.close()
    anon = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    for path in ("/login", "/signup"):
        anon.goto(f"{site.url}{path}")
        fits(anon, path, width)
    anon.context.close()
    site.api(site.rpi, "POST", f"/api/reservations/{rid}/destroy", email)
    site.api(site.g5k, "POST", f"/api/reservations/{g5k_rid}/destroy", email)
