"""Hostile lists (issue 17, fix17b #3): a booking or a next-slot question naming one node many
times, and a bulk action selecting one reservation many times, are refused with the repeated
item named — on the agent (POST /api/next-slot and /api/reservations, within a filter and across
filters), on the users' API (/api/v1/next-slot and /api/v1/reservations: 422), on the Reserve
form and its "Find next free slot" (the form's 400, with the other field errors), and on Manage's
and Configure's bulk actions — before any agent is asked anything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.agent_helpers import headers
from helpers.api_helpers import API, make_token
from helpers.webui_fixtures import SilentPort, add_user, register_agent, webui_client, write_webui_config

pytestmark = pytest.mark.usefixtures("fast_argon2")
ALICE = "alice@example.org"
MANY = 1000
FIELDS = 900  # a form carries at most 1000 fields (Starlette's parser refuses more, with a 400)


def _hours_ahead(h: float) -> str:
    t = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(hours=h)
    return t.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- the agent


@pytest.mark.parametrize("route", ["/api/next-slot", "/api/reservations"])
async def test_the_agent_names_the_repeated_node(
    client: httpx.AsyncClient, nodes: list[str], route: str
) -> None:
    when = {"after": "now"} if route.endswith("next-slot") else {"start": _hours_ahead(1)}
    bodies = [
        [{"nodes": ["pi-2"] * MANY}],
        [{"nodes": ["pi-1", "pi-3", "pi-1"]}],
        [{"nodes": ["pi-1"]}, {"nodes": ["pi-2", "pi-1"]}],  # across filters
    ]
    for filters in bodies:
        r = await client.post(route, json={"filters": filters, "duration_hours": 1, **when},
                              headers=headers(ALICE))
        assert r.status_code == 422, r.text
        text = r.text
        assert "named twice" in text and ("'pi-1'" in text or "'pi-2'" in text), text
    # Nothing was booked by the refused requests.
    mine = await client.get("/api/reservations", headers=headers(ALICE))
    assert mine.json() == []


# ---------------------------------------------------------------- the web UI


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A web UI with one registered agent that never answers: a refusal that asked it would
    take the agent timeout and end as 'unreachable', not as the 4xx expected here."""
    config = write_webui_config(tmp_path / "webui")
    add_user(config, ALICE, "alice-password-1")
    silent = SilentPort()
    agent_id = register_agent(config, "rpi-lab", silent.port, "raspberry")
    yield config, agent_id
    silent.close()


def test_the_users_api_names_the_repeated_node(webui: tuple[Path, int]) -> None:
    config, _ = webui
    token = {"Authorization": f"Bearer {make_token(config, ALICE)}"}
    many = [{"agent": "rpi-lab", "node": "pi-1"}] * MANY
    with webui_client(config) as b:
        for route, when in (("/next-slot", {"after": "now"}), ("/reservations", {"start": "now"})):
            for listed in (many, [{"agent": "rpi-lab", "node": "pi-2"}, *many[:2]]):
                r = b.c.post(f"{API}{route}", json={"nodes": listed, "hours": 1, **when}, headers=token)
                assert r.status_code == 422, (route, r.text)
                assert "rpi-lab/pi-1 is listed more than once" in r.json()["detail"], r.text


def test_the_reserve_form_names_the_repeated_node(webui: tuple[Path, int]) -> None:
    config, agent_id = webui
    form = {"mode": "nodes", "node": [f"{agent_id}/pi-1"] * FIELDS + [f"{agent_id}/pi-2"],
            "duration": "1", "when": "now"}
    with webui_client(config) as b:
        assert b.login(ALICE, "alice-password-1").status_code == 303
        r = b.post("/reserve/next-slot", form, page="/reserve")
        assert r.status_code == 400 and "rpi-lab/pi-1 is listed more than once" in r.json()["detail"]
        r = b.post("/reserve", form, page="/reserve")
        assert r.status_code == 400 and "rpi-lab/pi-1 is listed more than once" in r.text


def test_bulk_actions_name_the_repeated_reservation(webui: tuple[Path, int]) -> None:
    config, agent_id = webui
    with webui_client(config) as b:
        assert b.login(ALICE, "alice-password-1").status_code == 303
        sel = [f"{agent_id}:7"] * FIELDS
        r = b.post("/manage/action", {"action": "extend", "hours": "1", "sel": sel}, page="/manage")
        assert r.status_code == 422 and "Reservation 7 on rpi-lab is selected more than once" in r.text
        r = b.post("/configure/cancel", {"sel": [f"{agent_id}:3", f"{agent_id}:7", f"{agent_id}:3"]},
                   page="/configure")
        assert r.status_code == 303
        assert "Reservation 3 on rpi-lab is selected more than once" in b.get("/configure").text
