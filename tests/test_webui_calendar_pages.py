"""The Reserve calendar shows one page of the nodes matching the filters: its size does not grow
with the site (nodes x hours), the filters are applied by the server, and bad page or filter
values get an answer in words, never a 5xx."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.constants import TOKEN
from helpers.webui_fixtures import (
    Browser,
    add_user,
    fake_agent_app,
    register_agent,
    threaded_app,
    webui_client,
    write_webui_config,
)
from piseduce.webui.routes.reserve import PAGE_ROWS

USER, PASSWORD = "alice@example.org", "alice-password-1"
ROW = re.compile(r'class="cal-row[^"]*" data-key="([^"]+)"')


@contextlib.contextmanager
def site(tmp_path: Path, agents: int, nodes: int) -> Iterator[Browser]:
    """A web UI with `agents` fake agents of `nodes` nodes each, logged in as a user."""
    # A generous agent deadline: the fake agents share this process (and its GIL) with the web UI.
    cfg = write_webui_config(tmp_path, health_check_seconds=3600, agent_timeout_seconds=15)
    add_user(cfg, USER, PASSWORD)
    with contextlib.ExitStack() as stack:
        for i in range(agents):
            agent = fake_agent_app(f"site{i}", nodes=nodes, delay=0, token=TOKEN)
            port = stack.enter_context(threaded_app(agent))
            register_agent(cfg, f"site{i}", port, "raspberry")
        b = stack.enter_context(webui_client(cfg))
        assert b.login(USER, PASSWORD).status_code == 303
        yield b


def rows(html: str) -> list[str]:
    return ROW.findall(html)


def test_the_page_size_stays_bounded_as_nodes_and_hours_grow(tmp_path: Path) -> None:
    with site(tmp_path / "small", 1, PAGE_ROWS + 20) as b:
        small = b.get("/reserve?days=1")
        assert small.status_code == 200
        assert len(rows(small.text)) == PAGE_ROWS
        assert f"nodes 1–{PAGE_ROWS} of {PAGE_ROWS + 20}" in small.text
    with site(tmp_path / "big", 4, 1500) as b:  # 50 times the nodes, 7 times the hours
        big = b.get("/reserve?days=7")
        assert big.status_code == 200
        assert len(rows(big.text)) == PAGE_ROWS
        assert 'data-total="6000"' in big.text and f"nodes 1–{PAGE_ROWS} of 6000" in big.text
        # The last page holds the rest; a page past the end is the last one.
        last = b.get("/reserve/calendar?days=7&page=60")
        assert len(rows(last.text)) == PAGE_ROWS and "nodes 5901–6000 of 6000" in last.text
        assert rows(b.get("/reserve/calendar?days=7&page=999999").text) == rows(last.text)
        assert not set(rows(last.text)) & set(rows(big.text))
    # The site grew 50-fold and the window 7-fold; the page by what its header shows, not more.
    assert len(big.content) < 1.3 * len(small.content), (len(small.content), len(big.content))


def test_the_server_applies_the_filters_and_refuses_bad_ones_in_words(tmp_path: Path) -> None:
    with site(tmp_path, 2, 150) as b:
        chips = json.dumps([{"prop": "model", "op": "=", "value": "RPI4B"}, {"prop": "agent", "op": "=",
                                                                           "value": "site1"}])
        r = b.get("/reserve/calendar", params={"filters": chips})
        assert r.status_code == 200
        keys = rows(r.text)
        # site1's odd nodes (the fake agent's RPI4B), in natural order.
        assert len(keys) == 75 and all(k.endswith(tuple("13579")) for k in keys)
        assert 'data-matching="75"' in r.text and "300 nodes, 75 matching" in r.text
        assert "cal-page-next" not in r.text  # one page: no paging
        for bad in ("[{", '[{"prop": "model", "op": "~", "value": "x"}]', '{"a": 1}', "[" * 10000):
            r = b.get("/reserve/calendar", params={"filters": bad})
            assert r.status_code == 200 and "Filters:" in r.text, bad[:40]
            assert len(rows(r.text)) == PAGE_ROWS  # no filter applied
        for page in ("abc", "1.5", "9" * 400):
            assert b.get("/reserve/calendar", params={"page": page}).status_code in (400, 422), page
        assert len(rows(b.get("/reserve/calendar", params={"page": "-3"}).text)) == PAGE_ROWS


@pytest.mark.parametrize("days", [1, 7])
def test_every_calendar_address_keeps_the_page(tmp_path: Path, days: int) -> None:
    with site(tmp_path, 1, 250) as b:
        html = b.get(f"/reserve/calendar?days={days}&page=2").text
        assert "nodes 101–200 of 250" in html
        for control in ("cal-prev", "cal-today", "cal-next"):
            assert re.search(rf'id="{control}"[^>]*page=2"', html), control
        assert re.search(r'id="cal-page-next"[^>]*page=3"', html)
        assert re.search(r'id="cal-page-prev"[^>]*page=1"', html)
