"""The next free slot across agents (issue 17), through the users' API and the Reserve form: two
real agents (fake driver, child processes) — a Pi lab with a 10-minute turnaround and a
Grid'5000-like site allowing two nodes per user — whose answers are combined into the earliest
start where the whole request can be booked at once, then booked as answered."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import headers, node_body
from helpers.api_helpers import API, make_token
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
GAP = dt.timedelta(minutes=10)  # the Pi lab's turnaround


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class Lab:
    def __init__(self, root: Path) -> None:
        self.config = write_webui_config(root / "webui", agent_timeout_seconds=10.0)  # a loaded CI host
        add_user(self.config, USER, "alice-password")
        add_user(self.config, OTHER, "bob-password")
        self.rpi = AgentProcess(root / "rpi-lab", nodes=4, executor=False, turnaround_minutes=10)
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
        self.token = {"Authorization": f"Bearer {make_token(self.config, USER)}"}
        # Whole minutes, a little ahead: every expected start is exact.
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        self.base = now + dt.timedelta(minutes=10)
        # Bob: pi-1 for an hour from base (the Pi lab then needs 10 minutes), grisou-2 from
        # base + 1h30 to base + 3h.
        book_on(self.rpi, OTHER, ["pi-1"], start=iso(self.base), hours=1)
        book_on(self.g5k, OTHER, ["grisou-2"], start=iso(self.base + dt.timedelta(hours=1.5)), hours=1.5)

    def stop(self) -> None:
        self.rpi.stop()
        self.g5k.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("next-slot"))
    yield lab
    lab.stop()


def at(r: httpx.Response) -> dt.datetime:
    assert r.status_code == 200, r.text
    return dt.datetime.fromisoformat(r.json()["start"])


def api_book(b: Browser, lab: Lab, body: dict[str, Any], start: dt.datetime) -> httpx.Response:
    r: httpx.Response = b.c.post(
        f"{API}/reservations", json={**body, "start": iso(start), "bin": "slot"}, headers=lab.token
    )
    return r


def release_all(b: Browser, lab: Lab) -> None:
    r = b.c.get(f"{API}/reservations", params={"status": "active"}, headers=lab.token)
    assert r.status_code == 200, r.text
    for res in r.json():
        done = b.c.post(f"{API}/reservations/{res['agent']}/{res['id']}/release", headers=lab.token)
        assert done.status_code in (200, 202), done.text


def test_named_nodes_on_two_agents_get_their_earliest_common_start(lab: Lab) -> None:
    body: dict[str, Any] = {
        "nodes": [{"agent": "rpi-lab", "node": "pi-1"}, {"agent": "g5k-nancy", "node": "grisou-2"}],
        "hours": 1,
    }
    with webui_client(lab.config) as b:
        r = b.c.post(f"{API}/next-slot", json={**body, "after": iso(lab.base)}, headers=lab.token)
        start = at(r)
        # pi-1 is free from base + 1h10 (its hour and the turnaround); grisou-2 is then taken at
        # base + 1h30, before an hour is over: the first start both allow is base + 3h.
        assert start == lab.base + dt.timedelta(hours=3), r.json()
        assert sorted(f"{n['agent']}/{n['node']}" for n in r.json()["nodes"]) == [
            "g5k-nancy/grisou-2",
            "rpi-lab/pi-1",
        ]
        assert "bob" not in r.text
        # A minute earlier cannot be booked; the answer can.
        early = api_book(b, lab, body, start - dt.timedelta(minutes=1))
        assert early.status_code == 409, early.text
        booked = api_book(b, lab, body, start)
        assert booked.status_code == 201, booked.text
        # Asked again, the user's own booking counts: the next common start is after it.
        again = at(b.c.post(f"{API}/next-slot", json={**body, "after": iso(lab.base)}, headers=lab.token))
        assert again == start + dt.timedelta(hours=1) + GAP
        release_all(b, lab)


def test_a_count_spread_over_two_agents_starts_as_early_as_it_can(lab: Lab) -> None:
    # 5 nodes: at base, the Pi lab has 3 free (pi-1 is Bob's) and the site gives 2 (its limit
    # per user): 5 at base, spread — although no agent alone could ever hold 5.
    body: dict[str, Any] = {"count": 5, "filters": [], "hours": 1}
    with webui_client(lab.config) as b:
        r = b.c.post(f"{API}/next-slot", json={**body, "after": iso(lab.base)}, headers=lab.token)
        assert at(r) == lab.base, r.json()
        nodes = r.json()["nodes"]
        assert len(nodes) == 5 and {"agent": "rpi-lab", "node": "pi-1"} not in nodes
        assert sum(n["agent"] == "g5k-nancy" for n in nodes) == 2
        # Booked as answered (by count, the booking's own spread, most free first, knows no
        # agent's per-user limit: the nodes answered are what fits).
        booked = api_book(b, lab, {"nodes": nodes, "hours": 1}, lab.base)
        assert booked.status_code == 201, booked.text
        release_all(b, lab)
        # 6: the site still gives only 2, so all 4 Pis are needed: after Bob's hour and turnaround.
        six = {**body, "count": 6}
        r = b.c.post(f"{API}/next-slot", json={**six, "after": iso(lab.base)}, headers=lab.token)
        assert at(r) == lab.base + dt.timedelta(hours=1) + GAP, r.json()
        named = {"nodes": r.json()["nodes"], "hours": 1}
        assert api_book(b, lab, named, at(r) - dt.timedelta(minutes=1)).status_code == 409
        assert api_book(b, lab, named, at(r)).status_code == 201
        release_all(b, lab)


def test_filters_choose_the_agents_and_nodes(lab: Lab) -> None:
    with webui_client(lab.config) as b:
        # 2 of the site's servers for 2 h from base + 1 h: grisou-2 is Bob's from base + 1h30,
        # the others are free: at once.
        body = {"count": 2, "filters": ["type=g5k"], "hours": 2}
        when = lab.base + dt.timedelta(hours=1)
        r = b.c.post(f"{API}/next-slot", json={**body, "after": iso(when)}, headers=lab.token)
        assert at(r) == when and all(n["agent"] == "g5k-nancy" for n in r.json()["nodes"])
        assert {"agent": "g5k-nancy", "node": "grisou-2"} not in r.json()["nodes"]
        # The two RPI4B (pi-1, pi-3) for an hour from base: after Bob's pi-1 and the turnaround.
        body = {"count": 2, "filters": ["model=RPI4B"], "hours": 1}
        r = b.c.post(f"{API}/next-slot", json={**body, "after": iso(lab.base)}, headers=lab.token)
        assert at(r) == lab.base + dt.timedelta(hours=1) + GAP
        assert sorted(n["node"] for n in r.json()["nodes"]) == ["pi-1", "pi-3"]


def test_what_never_fits_is_a_clear_4xx(lab: Lab) -> None:
    with webui_client(lab.config) as b:
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"count": 9, "hours": 1}, 409, "only 8 available node(s)"),
            ({"count": 3, "filters": ["type=g5k"], "hours": 1}, 409, "2 per user"),
            ({"count": 1, "filters": ["model!=RPI4B"], "hours": 1}, 409, "'is not' filters"),
            ({"nodes": [{"agent": "nope", "node": "x"}], "hours": 1}, 422, "no agent is named"),
            ({"nodes": [{"agent": "rpi-lab", "node": "pi-9"}], "hours": 1}, 409, "unknown node"),
            ({"count": 1, "hours": 1, "after": "tomorrow"}, 422, "ISO-8601"),
            ({"count": 1, "hours": 0}, 422, ""),
            ({"count": 1, "hours": 1, "filters": ["memory>=lots"]}, 422, ""),
            ({"hours": 1}, 422, "either"),
        ]
        for body, status, words in cases:
            r = b.c.post(f"{API}/next-slot", json=body, headers=lab.token)
            assert r.status_code == status, (body, r.status_code, r.text)
            assert words in r.json()["detail"], (body, r.text)
        r = b.c.post(f"{API}/next-slot", json={"count": 1, "hours": 1})
        assert r.status_code == 401


def test_the_reserve_form_asks_the_same(lab: Lab) -> None:
    with webui_client(lab.config) as b:
        b.login(USER, "alice-password")
        chips = json.dumps([{"prop": "model", "op": "=", "value": "RPI4B"}])
        form = {"mode": "count", "count": "2", "filters": chips, "when": "later", "start": iso(lab.base)}
        r = b.post("/reserve/next-slot", {**form, "duration": "1", "bin": ""}, page="/reserve")
        assert r.status_code == 200, r.text
        got = r.json()
        assert dt.datetime.fromisoformat(got["start"]) == lab.base + dt.timedelta(hours=1) + GAP
        assert got["hours"] == 1 and got["now"] is False and "press Reserve" in got["detail"]
        # Without the page's CSRF token: refused.
        r = b.post("/reserve/next-slot", {**form, "duration": "1"}, csrf=False, page="/reserve")
        assert r.status_code in (400, 403), r.text
        r = b.post("/reserve/next-slot", {**form, "duration": "-1"}, page="/reserve")
        assert r.status_code == 400 and "duration" in r.json()["detail"]


def test_an_agent_that_does_not_answer_is_named_not_hidden(lab: Lab) -> None:
    # Last in this module: a third agent, registered but not running.
    from helpers.agent_helpers import free_port

    register_agent(lab.config, "rpi-gone", free_port(), "raspberry")
    with webui_client(lab.config) as b:
        body = {"count": 1, "filters": ["type=raspberry"], "hours": 1, "after": iso(lab.base)}
        r = b.c.post(f"{API}/next-slot", json=body, headers=lab.token)
        assert at(r) == lab.base and r.json()["nodes"][0]["agent"] == "rpi-lab"
        assert "rpi-gone" in r.headers.get("X-Piseduce-Unavailable", ""), dict(r.headers)
        # Its named nodes cannot be searched: 503, try again.
        r = b.c.post(
            f"{API}/next-slot",
            json={"nodes": [{"agent": "rpi-gone", "node": "pi-1"}], "hours": 1},
            headers=lab.token,
        )
        assert r.status_code == 503 and "Try again" in r.json()["detail"], r.text


def test_hours_out_of_range_say_what_is_wanted(lab: Lab) -> None:
    # issue 17 (fix17): NaN said "should be greater than 0"; 0.0001 h was taken as a 0.36 s slot.
    with webui_client(lab.config) as b:
        for path in ("next-slot", "reservations"):
            for hours, words in (("NaN", "a number of hours is expected, e.g. 3"),
                                 ("0.0001", "from 0.01 (36 s)"), ("0.009", "from 0.01 (36 s)")):
                r = b.c.post(f"{API}/{path}", content=f'{{"count": 1, "hours": {hours}}}',
                             headers={**lab.token, "Content-Type": "application/json"})
                assert r.status_code == 422 and words in r.text, (path, hours, r.status_code, r.text)
        b.login(USER, "alice-password")
        form = {"mode": "count", "count": "1", "filters": "[]", "when": "now", "start": "", "bin": ""}
        for page in ("/reserve/next-slot", "/reserve"):
            r = b.post(page, {**form, "duration": "0.0001"}, page="/reserve")
            assert r.status_code == 400 and "at least 0.01 (36 s)" in r.text, (page, r.text)
