"""The API's pages in Chromium: Settings > API tokens (create from the keyboard, the secret shown
once with its copy button, times in the viewer's zone, revoke, 390 px), the interactive docs under
the pages' CSP, and the Reserve page's filters matching the API's node filters node for node."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from helpers.sequences_fixtures import Site, add_filter, new_user, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_a_token_is_made_from_the_keyboard_used_and_revoked(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email, tz="America/Montreal", width=390)
    page.goto(f"{site.url}/settings?tab=tokens")
    assert "No token yet" in page.content()
    page.focus("#token-name")
    page.keyboard.type("ci runner")
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # read -> write
    page.keyboard.press("Tab")
    page.keyboard.type("7")
    page.keyboard.press("Enter")
    page.wait_for_selector("#new-token")
    secret = page.inner_text("#token-secret").strip()
    assert re.fullmatch(r"pst_[A-Za-z0-9_-]{43}", secret)
    assert f"pisctl login {site.url}" in page.inner_text("#token-login")
    page.click("#new-token button.copy")  # plain http: the secret is selected for Ctrl+C
    assert (
        page.evaluate("window.getSelection().toString().trim()") == secret
        or page.inner_text("#new-token button.copy") == "Copied"
    )
    assert _no_horizontal_scroll(page)
    me = httpx.get(f"{site.url}/api/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert me.status_code == 200 and me.json()["email"] == email and me.json()["scope"] == "write"
    # The list: shown once (the secret is gone), times in the viewer's zone (Montreal: UTC-5/-4).
    page.goto(f"{site.url}/settings?tab=tokens")
    row = page.inner_text(".token-row")
    assert "ci runner" in row and "write" in row and secret not in page.content()
    created = page.get_attribute(".token-row time", "data-utc")
    assert created is not None
    shown = page.inner_text(".token-row time")
    assert re.search(r"\d{1,2}:\d{2}", shown)
    utc_hour = int(created[11:13])
    local_hour = int(re.search(r"(\d{1,2}):\d{2}", shown).group(1)) % 12  # type: ignore[union-attr]
    assert local_hour != utc_hour % 12, (created, shown)  # not UTC
    assert _no_horizontal_scroll(page)
    page.click(".token-row button.danger")  # the confirmation dialog is accepted
    page.wait_for_selector(".flash.ok")
    assert "revoked" in page.inner_text(".flash.ok")
    gone = httpx.get(f"{site.url}/api/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert gone.status_code == 401
    page.context.close()


def test_the_interactive_docs_load_under_the_pages_csp(site: Site, browser: Any) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"failed {r.url}"))
    page.goto(f"{site.url}/api/v1/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert "PiSeduce API" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector("text=/reservations")
    assert not [p for p in problems if "Content Security Policy" in p or "failed" in p], problems
    ctx.close()


def test_the_reserve_pages_filters_are_the_apis(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    from helpers.api_helpers import make_token

    auth = {"Authorization": f"Bearer {make_token(site.config, email, 'read')}"}
    for filters in (
        (("memory", ">=", "4G"),),
        (("model", "!=", "RPI4B"),),
        (("cores", ">=", "16"), ("type", "=", "g5k")),
    ):
        page.goto(f"{site.url}/reserve")
        page.wait_for_selector(".cal-row[data-key]")
        for prop, op, value in filters:
            add_filter(page, prop, op, value)
        shown = sorted(page.locator(".cal-row[data-key]:not(.hidden) .pick .node").all_inner_texts())
        params = {"filter": [f"{p}{o}{v}" for p, o, v in filters]}
        api = httpx.get(f"{site.url}/api/v1/nodes", params=params, headers=auth, timeout=10)
        assert api.status_code == 200, api.text
        assert shown and shown == sorted(n["name"] for n in api.json()), filters
    page.context.close()
