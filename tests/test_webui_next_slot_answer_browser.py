"""Reserve after "Find next free slot" books the answer (issue 17, fix17): the answered nodes by
name, at the answered start, for the answered hours; a form changed after the answer clears it (the
page says so) and Reserve then books what the form says. Headless Chromium on the two-agent site of
helpers/sequences_fixtures.py (12 Pi on rpi-lab, grisou-1..4 on g5k-nancy)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from helpers.sequences_fixtures import Site, add_filter, booked_nodes, new_user, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]
RPI4B = ["pi-1", "pi-3", "pi-5", "pi-7", "pi-9", "pi-11"]  # the site's RPI4B


def find(page: Any) -> list[str]:
    page.click("#b-find")
    page.wait_for_function("() => document.getElementById('b-slot').textContent.startsWith('Free')")
    said = page.inner_text("#b-slot")
    shown = re.search(r"\(([^)]*)\)", said)
    assert shown, said
    return sorted(n.split("/", 1)[1] for n in shown.group(1).split(", "))


def test_reserve_books_the_answered_nodes(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    page.check("#b-mode-count")
    page.fill("#b-count", "4")
    page.fill("#b-duration", "3")
    answered = find(page)
    assert len(answered) == 4, answered
    page.click("#b-submit")
    assert booked_nodes(page) == answered
    mine = site.mine(site.rpi, email) + site.mine(site.g5k, email)
    assert sorted(n for r in mine for n in [r["node"]]) == answered, mine
    page.context.close()


def test_a_form_changed_after_the_answer_books_what_the_form_says(site: Site, browser: Any) -> None:
    email = new_user(site)
    page = open_page(browser, site, email)
    page.check("#b-mode-count")
    page.fill("#b-count", "4")
    page.fill("#b-duration", "3")
    page.fill("#b-count", "3")  # a different request than the one about to be answered
    answered = find(page)
    assert len(answered) == 3, answered
    add_filter(page, "model", "=", "RPI4B")
    assert "cleared" in page.inner_text("#b-slot"), page.inner_text("#b-slot")
    page.click("#b-submit")
    got = booked_nodes(page)
    # Booked per the form (3 RPI4B), not the answer (which held a node that is not one).
    assert len(got) == 3 and set(got) <= set(RPI4B), (got, answered)
    assert not set(answered) <= set(RPI4B), answered
    page.context.close()
