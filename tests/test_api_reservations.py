"""The users' API against real agents (fake driver, child processes): nodes and their filters, the
schedule, booking (the same as the Reserve page's, all or nothing across agents), the whole life of
a reservation (form, deploy, progress, connection, extend, release), and isolation: another user's
token sees none of it (404), an admin's sees it all."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.api_helpers import API, bearer, make_token
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_user,
    book_on,
    register_agent,
    webui_client,
    write_webui_config,
)

pytestmark = [pytest.mark.usefixtures("fast_argon2"), pytest.mark.slow]
ALICE, BOB = "alice@example.org", "bob@example.org"


class Site:
    """A web UI with two agents: `lab` (4 Pis, with an executor) and `annex` (2 Pis, no executor)."""

    def __init__(self, root: Path) -> None:
        # Generous deadlines: this machine runs several suites at once.
        self.config = write_webui_config(root / "webui", agent_timeout_seconds=5.0)
        add_user(self.config, ALICE, "alice-password")
        add_user(self.config, BOB, "bob-password")
        add_user(self.config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
        self.lab = AgentProcess(root / "lab", nodes=4)
        self.annex = AgentProcess(root / "annex", nodes=2, executor=False)
        register_agent(self.config, "lab", self.lab.port, "raspberry")
        register_agent(self.config, "annex", self.annex.port, "raspberry")
        self.alice = bearer(make_token(self.config, ALICE, "write"))
        self.bob = bearer(make_token(self.config, BOB, "write"))
        self.admin = bearer(make_token(self.config, ADMIN_EMAIL, "write"))

    def stop(self) -> None:
        self.lab.stop()
        self.annex.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("api"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Browser]:
    with webui_client(site.config) as b:
        yield b


@pytest.fixture
def api(browser: Browser) -> httpx.Client:
    """The same web UI; every API call carries its token (which wins over the browser's cookie)."""
    c: httpx.Client = browser.c
    return c


def release_all(api: httpx.Client, who: dict[str, str]) -> None:
    for r in api.get(f"{API}/reservations", params={"status": "active"}, headers=who).json():
        api.post(f"{API}/reservations/{r['key']}/release", headers=who)


def test_nodes_and_filters_are_the_reserve_pages(api: httpx.Client, site: Site) -> None:
    every = api.get(f"{API}/nodes", headers=site.alice)
    assert every.status_code == 200, every.text
    assert sorted((n["agent"], n["name"]) for n in every.json()) == [
        ("annex", "pi-1"),
        ("annex", "pi-2"),
        ("lab", "pi-1"),
        ("lab", "pi-2"),
        ("lab", "pi-3"),
        ("lab", "pi-4"),
    ]
    big = api.get(f"{API}/nodes", params={"filter": ["memory>=4G", "agent=lab"]}, headers=site.alice).json()
    assert sorted(n["name"] for n in big) == ["pi-1", "pi-3"]  # memory_gb 4: the odd ones
    assert {n["properties"]["model"] for n in big} == {"RPI4B"}
    small = api.get(f"{API}/nodes", params={"filter": "model!=rpi4b", "agent": "annex"}, headers=site.alice)
    assert [n["name"] for n in small.json()] == ["pi-2"]
    assert api.get(f"{API}/nodes", params={"filter": "memory_gb<=1"}, headers=site.alice).json()
    bad = api.get(f"{API}/nodes", params={"filter": "memory>=lots"}, headers=site.alice)
    assert bad.status_code == 422 and "memory>=lots" in bad.json()["detail"]
    nobody = api.get(f"{API}/nodes", params={"agent": "nowhere"}, headers=site.alice)
    assert nobody.status_code == 404 and "nowhere" in nobody.json()["detail"]
    agents = api.get(f"{API}/agents", headers=site.alice).json()
    assert [(a["name"], a["type"], a["state"]) for a in agents] == [
        ("annex", "raspberry", "up"),
        ("lab", "raspberry", "up"),
    ]


def _agent_rows(agent: AgentProcess, email: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{agent.url}/api/reservations",
        params={"status": "active"},
        headers={"Authorization": "Bearer " + _agent_token(), "X-Piseduce-User": email},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def _agent_token() -> str:
    from helpers.agent_helpers import TOKEN

    return TOKEN


def test_a_booking_through_the_api_is_the_same_as_through_the_page(
    api: httpx.Client, browser: Browser, site: Site
) -> None:
    page = browser
    assert page.login(ALICE, "alice-password").status_code == 303
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    r = page.post(
        "/reserve",
        {
            "mode": "count",
            "count": "1",
            "filters": '[{"prop":"memory","op":">=","value":"4G"}]',
            "when": "later",
            "start": start.isoformat(),
            "duration": "2",
            "bin": "same",
        },
        page="/reserve",
    )
    assert r.status_code == 200, r.text
    r = api.post(
        f"{API}/reservations",
        json={"count": 1, "filters": ["memory>=4G"], "start": start.isoformat(), "hours": 2, "bin": "same"},
        headers=site.alice,
    )
    assert r.status_code == 201, r.text
    [made] = r.json()
    assert made["key"] == f"{made['agent']}/{made['id']}" and made["status"] == "configuring"
    rows = [x for a in (site.lab, site.annex) for x in _agent_rows(a, ALICE) if x["bin"] == "same"]
    assert len(rows) == 2

    def shape(x: dict[str, Any]) -> tuple[Any, ...]:
        return (x["owner"], x["bin"], x["start"], x["end"], x["status"], x["node_properties"]["model"])

    assert shape(rows[0]) == shape(rows[1])
    mine = api.get(f"{API}/reservations", params={"bin": "same"}, headers=site.alice).json()
    assert len(mine) == 2 and all(m["progress"] is None for m in mine)
    release_all(api, site.alice)


def test_booking_is_all_or_nothing_across_agents(api: httpx.Client, site: Site) -> None:
    book_on(site.annex, BOB, ["pi-2"], hours=3)
    body = {"nodes": [{"agent": "lab", "node": "pi-2"}, {"agent": "annex", "node": "pi-2"}], "hours": 1}
    r = api.post(f"{API}/reservations", json=body, headers=site.alice)
    assert r.status_code == 409, r.text
    assert "pi-2" in r.json()["detail"] and "all or nothing" in r.json()["detail"]
    assert [x for x in _agent_rows(site.lab, ALICE) if x["status"] != "cancelled"] == []
    too_many = api.post(f"{API}/reservations", json={"count": 99, "hours": 1}, headers=site.alice)
    assert too_many.status_code == 409 and "not enough free nodes" in too_many.json()["detail"]
    both = api.post(
        f"{API}/reservations",
        json={"nodes": [{"agent": "lab", "node": "pi-1"}], "count": 1, "hours": 1},
        headers=site.alice,
    )
    assert both.status_code == 422
    unknown = api.post(
        f"{API}/reservations",
        json={"nodes": [{"agent": "mars", "node": "x"}], "hours": 1},
        headers=site.alice,
    )
    assert unknown.status_code == 422 and "mars" in unknown.json()["detail"]
    naive = api.post(
        f"{API}/reservations", json={"count": 1, "hours": 1, "start": "2030-01-01T10:00"}, headers=site.alice
    )
    assert naive.status_code == 422 and "time zone" in naive.json()["detail"]
    release_all(api, {"Authorization": site.bob["Authorization"]})


@pytest.mark.parametrize("start", ["9999-12-31T23:00:00Z", "2201-01-01T00:00:00Z", "0001-01-01T00:00:00Z"])
def test_a_start_beyond_the_calendars_is_refused_by_the_api_and_the_page(
    api: httpx.Client, browser: Browser, site: Site, start: str
) -> None:
    """A count booking far in the future overflowed the web UI's date arithmetic (500, "internal
    error of the agent"): a start outside the agents' calendars (2000-2200) is the user's 422 on
    both ways in, and nothing is booked."""
    for body in ({"count": 1, "hours": 2, "start": start},
                 {"nodes": [{"agent": "lab", "node": "pi-3"}], "hours": 2, "start": start}):
        r = api.post(f"{API}/reservations", json=body, headers=site.alice)
        assert r.status_code == 422 and "2000 and 2200" in r.json()["detail"], r.text
    browser.login(ALICE, "alice-password")
    page = browser.post("/reserve", {"mode": "count", "count": "1", "filters": "[]", "when": "later",
                                     "start": start, "duration": "2", "bin": ""}, page="/reserve")
    assert page.status_code < 500 and "2000 and 2200" in page.text, page.text[-800:]
    assert [x for x in _agent_rows(site.lab, ALICE) if x["status"] not in ("cancelled", "ended")] == []


def _wait(
    api: httpx.Client, key: str, who: dict[str, str], status: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = api.get(f"{API}/reservations/{key}", headers=who)
        assert r.status_code == 200, r.text
        if r.json()["status"] == status or time.monotonic() > deadline:
            assert r.json()["status"] == status, r.json()
            data: dict[str, Any] = r.json()
            return data
        time.sleep(0.3)


def test_the_life_of_a_reservation_and_isolation(api: httpx.Client, site: Site) -> None:
    r = api.post(
        f"{API}/reservations",
        json={"nodes": [{"agent": "lab", "node": "pi-4"}], "hours": 1, "bin": "life"},
        headers=site.alice,
    )
    assert r.status_code == 201, r.text
    key = r.json()[0]["key"]
    assert "deploy" in r.json()[0]["actions"]
    # Bob's token: the reservation does not exist for him, whatever he asks.
    for method, path, body in (
        ("GET", "", None),
        ("GET", "/events", None),
        ("GET", "/form", None),
        ("POST", "/deploy", {"values": {"environment": "tiny"}}),
        ("POST", "/release", None),
        ("POST", "/reboot", None),
        ("POST", "/extend", {"hours": 1}),
    ):
        denied = api.request(method, f"{API}/reservations/{key}{path}", json=body, headers=site.bob)
        assert denied.status_code == 404, (path, denied.text)
    assert key not in [x["key"] for x in api.get(f"{API}/reservations", headers=site.bob).json()]
    assert api.get(f"{API}/reservations", params={"all": "true"}, headers=site.bob).status_code == 403
    schedule = api.get(f"{API}/schedule", params={"agent": "lab"}, headers=site.bob).json()
    slot = next(n for n in schedule if n["node"] == "pi-4")["slots"][0]
    assert slot["mine"] is False
    # An admin sees it in the list of everyone's, and may look at it.
    everyone = api.get(f"{API}/reservations", params={"all": "true"}, headers=site.admin).json()
    assert key in [x["key"] for x in everyone]
    assert api.get(f"{API}/reservations", headers=site.admin).json() == []  # not the admin's own
    assert api.get(f"{API}/reservations/{key}", headers=site.admin).status_code == 200
    # Alice deploys it.
    form = api.get(f"{API}/reservations/{key}/form", headers=site.alice)
    assert form.status_code == 200 and "environment" in [f["name"] for f in form.json()]
    bad = api.post(
        f"{API}/reservations/{key}/deploy", json={"values": {"environment": "nope"}}, headers=site.alice
    )
    assert bad.status_code in (409, 422), bad.text
    r = api.post(
        f"{API}/reservations/{key}/deploy", json={"values": {"environment": "tiny"}}, headers=site.alice
    )
    assert r.status_code == 202, r.text
    done = _wait(api, key, site.alice, "deployed")
    assert done["connection"]["host"] and done["connection"]["command"].startswith("ssh")
    assert done["events"] and done["events"][0]["n"] == 1
    last = done["events"][-1]["n"]
    assert (
        api.get(f"{API}/reservations/{key}/events", params={"after": last}, headers=site.alice).json() == []
    )
    assert (
        len(
            api.get(f"{API}/reservations/{key}/events", params={"after": last - 1}, headers=site.alice).json()
        )
        == 1
    )
    # Extend, then release.
    end = dt.datetime.fromisoformat(done["end"].replace("Z", "+00:00"))
    longer = api.post(f"{API}/reservations/{key}/extend", json={"hours": 1}, headers=site.alice)
    assert longer.status_code == 202, longer.text
    assert dt.datetime.fromisoformat(longer.json()["end"].replace("Z", "+00:00")) - end == dt.timedelta(
        hours=1
    )
    gone = api.post(f"{API}/reservations/{key}/release", headers=site.alice)
    assert gone.status_code == 202, gone.text
    _wait(api, key, site.alice, "ended")
    again = api.post(f"{API}/reservations/{key}/release", headers=site.alice)
    assert again.status_code == 409, again.text
