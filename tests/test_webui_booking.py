"""A booking from the Reserve page is all or nothing, across agents too (DESIGN §5.1): two real
agents (fake driver, child processes), a Pi lab and a Grid'5000-like site that allows two nodes
per user, and bookings by count and by click of which a part cannot be booked."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import headers, node_body
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_user,
    book_on,
    register_agent,
    webui_client,
    write_webui_config,
)

pytestmark = pytest.mark.usefixtures("fast_argon2")
USER, OTHER = "alice@example.org", "bob@example.org"


class Site:
    def __init__(self, root: Path) -> None:
        # 10 s, not the fixtures' 1 s: no test here is about a slow agent, and a loaded CI host
        # once took over 1 s to answer, which failed a booking as "unreachable".
        self.config = write_webui_config(root / "webui", agent_timeout_seconds=10.0)
        add_user(self.config, USER, "alice-password")
        self.rpi = AgentProcess(root / "rpi-lab", nodes=4, executor=False)
        (root / "g5k-nancy").mkdir()
        (root / "g5k-nancy" / "secret.key").write_bytes((root / "webui" / "secret.key").read_bytes())
        self.g5k = AgentProcess(
            root / "g5k-nancy", nodes=0, node_type="g5k", executor=False, max_nodes_per_user=2
        )
        for i in range(1, 5):
            r = httpx.post(
                f"{self.g5k.url}/api/admin/nodes",
                json=node_body(f"grisou-{i}", "Dell R640", cluster="grisou"),
                headers=headers("root@example.org", admin=True),
                timeout=10,
            )
            assert r.status_code == 201, r.text
        self.rpi_id = register_agent(self.config, "rpi-lab", self.rpi.port, "raspberry")
        self.g5k_id = register_agent(self.config, "g5k-nancy", self.g5k.port, "g5k", site="nancy")

    def reservations(self, agent: AgentProcess, status: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{agent.url}/api/reservations", params={"status": status}, headers=headers(USER), timeout=10
        )
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()
        return out

    def active(self) -> list[str]:
        return sorted(r["node"] for a in (self.rpi, self.g5k) for r in self.reservations(a, "active"))

    def stop(self) -> None:
        self.rpi.stop()
        self.g5k.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("booking"))
    # Another user holds grisou-1 (for this user, a node busy outside their bookings).
    book_on(s.g5k, OTHER, ["grisou-1"], hours=4)
    yield s
    s.stop()


def book(b: Browser, **data: Any) -> tuple[int, list[str], list[str]]:
    body = {"when": "now", "duration": "1", "bin": "", **data}
    r = b.post("/reserve", body, page="/reserve")
    booked = re.findall(r'<li class="booked">([^ ]+) on ', r.text)
    refused = [html.unescape(t) for t in re.findall(r'<li class="refused">([^<]*)</li>', r.text)]
    return r.status_code, sorted(booked), refused


def count(n: int, *filters: tuple[str, str, str]) -> dict[str, Any]:
    chips = [{"prop": p, "op": o, "value": v} for p, o, v in filters]
    return {"mode": "count", "count": str(n), "filters": json.dumps(chips)}


def test_a_count_not_fully_free_books_nothing(site: Site) -> None:
    with webui_client(site.config) as b:
        b.login(USER, "alice-password")
        status, booked, refused = book(b, **count(4, ("cluster", "=", "grisou"), ("type", "=", "g5k")))
    assert status == 409 and booked == [], (booked, refused)
    assert site.active() == []
    assert any(
        "4 node(s) matching cluster = grisou AND type = g5k: not booked — not enough free nodes in that slot "
        "(only 3 free)"
        in r
        and "Nothing was booked: a booking is all or nothing." in r
        for r in refused
    ), refused


def test_a_count_over_two_agents_with_a_refused_part_books_nothing(site: Site) -> None:
    with webui_client(site.config) as b:
        b.login(USER, "alice-password")
        # 7 nodes: the 4 Pis and 3 servers are free, but the site allows 2 per user.
        status, booked, refused = book(b, **count(7))
    assert status == 409 and booked == [], (booked, refused)
    assert site.active() == []
    text = " ".join(refused)
    assert "on g5k-nancy: not booked — " in text and "2 per user" in text, refused
    assert "Nothing was booked: a booking is all or nothing." in text, refused
    assert "given back at once: pi-1 (rpi-lab), pi-2 (rpi-lab), pi-3 (rpi-lab), pi-4 (rpi-lab)" in text, (
        refused
    )
    given = site.reservations(site.rpi, "cancelled")
    assert sorted(r["node"] for r in given) == ["pi-1", "pi-2", "pi-3", "pi-4"]


def test_clicked_nodes_on_two_agents_one_taken_books_nothing(site: Site) -> None:
    with webui_client(site.config) as b:
        b.login(USER, "alice-password")
        status, booked, refused = book(
            b, mode="selected", node=[f"{site.rpi_id}/pi-1", f"{site.g5k_id}/grisou-1"]
        )
    assert status == 409 and booked == [], (booked, refused)
    assert site.active() == []
    text = " ".join(refused)
    assert "grisou-1 on g5k-nancy: not booked — " in text and "given back at once: pi-1 (rpi-lab)" in text, (
        refused
    )


def test_a_count_over_two_agents_that_fits_books_all_of_it(site: Site) -> None:
    with webui_client(site.config) as b:
        b.login(USER, "alice-password")
        status, booked, refused = book(b, **count(6), bin="both")
    assert status == 200 and refused == [], refused
    assert len(booked) == 6 and site.active() == booked
    assert sorted(n for n in booked if n.startswith("grisou")) != [] and "grisou-1" not in booked


def test_deeply_nested_filters_are_refused_in_words(site: Site) -> None:
    """The filter chips are JSON from the page: 8000 levels of '[' made json.loads raise
    RecursionError (a 500); now "the filters are malformed" and nothing booked."""
    before = site.active()
    with webui_client(site.config) as b:
        b.login(USER, "alice-password")
        for filters in ("[" * 8000 + "]" * 8000, "[" * 40 + "]" * 40, '[{"prop": ' * 3000):
            status, booked, refused = book(b, mode="count", count="1", filters=filters)
            assert status == 400 and booked == [], (status, refused)
            assert any("the filters are malformed" in r for r in refused), refused
    assert site.active() == before
