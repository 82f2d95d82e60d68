"""The web UI's forms read numbers strictly and never pass a field on cut (issue 11 follow-up):
float("1_0") is 10 and float("１") is 1 (a 10-hour booking from a typo), "-0" passed the Extend
check and meant "by the reservation's own length", a 100,000-character bin was booked as its first
64 characters. Each is refused in words, and nothing is booked or changed."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import headers
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.webui_fixtures import (
    AgentProcess,
    Browser,
    add_agent_form,
    add_user,
    webui_client,
    write_webui_config,
)

pytestmark = pytest.mark.usefixtures("fast_argon2")
ALICE = "alice@example.org"
LOOSE_HOURS = ("1_0", "１", "٢", "1e1", "nan", "inf", "-Infinity", "1e999", "0x1")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path_factory.mktemp("agents") / "rpi-lab", nodes=6)
    yield a
    a.stop()


@pytest.fixture
def config(tmp_path: Path, agent: AgentProcess) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, ALICE, "alice-password")
    with webui_client(cfg) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        r = admin.post("/admin/agents", add_agent_form("rpi-lab", agent.port), page="/admin/agents")
        assert r.status_code == 303, r.text
    return cfg


def mine(agent: AgentProcess, node: str) -> list[dict[str, Any]]:
    """Alice's live reservations of `node`, as the agent has them (each test books its own node)."""
    r = httpx.get(f"http://127.0.0.1:{agent.port}/api/reservations?status=active", headers=headers(ALICE))
    r.raise_for_status()
    return [it for it in r.json() if it["node"] == node]


def book(b: Browser, node: str, **data: object) -> httpx.Response:
    body = {"mode": "selected", "node": f"1/{node}", "when": "now", "duration": "1", "bin": "", **data}
    return b.post("/reserve", body, page="/reserve")


def text_of(r: httpx.Response) -> str:
    return html.unescape(r.text)


def test_reserve_refuses_loose_numbers_and_a_bin_past_its_limit(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as b:
        b.login(ALICE, "alice-password")
        for text in (*LOOSE_HOURS, "-0", "0"):
            r = book(b, "pi-1", duration=text)
            assert r.status_code == 400, (text, r.text)
            page = text_of(r)
            assert "The duration" in page and 'class="booked"' not in page, (text, page)
        r = book(b, "pi-1", duration="1_0")
        assert (
            "The duration (hours): a number from 0 to 8784 is expected (digits 0-9 and a dot), not '1_0'"
            in text_of(r)
        )
        for text in ("0_1", "１", "1.0", "-1", "nan", "1e0", ""):
            r = book(b, "pi-1", mode="count", count=text, filters="[]")
            assert r.status_code == 400 and "The number of nodes" in text_of(r), (text, r.text)
        # A filter compares with a number: "1_0" and "nan" are none.
        for value in ("0_4", "nan", "inf"):
            filters = f'[{{"prop":"memory_gb","op":">=","value":"{value}"}}]'
            r = book(b, "pi-1", mode="count", count="1", filters=filters)
            assert r.status_code == 400 and "needs a number" in text_of(r), (value, r.text)
        r = book(b, "pi-1", bin="b" * 100_000)
        assert r.status_code == 400, r.text
        assert "The bin name takes at most 64 characters (this one has 100000)." in text_of(r)
        assert mine(agent, "pi-1") == []
        # Digits as typed are still read: 1.5 hours is 1.5 hours.
        r = book(b, "pi-1", duration="1.5", bin="b" * 64)
        assert r.status_code == 200 and 'class="booked"' in r.text, r.text
    (it,) = mine(agent, "pi-1")
    start, end = (dt.datetime.fromisoformat(it[k]) for k in ("start", "end"))
    assert end - start == dt.timedelta(hours=1.5) and it["bin"] == "b" * 64


def test_extend_by_minus_zero_or_loose_hours_changes_nothing(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as b:
        b.login(ALICE, "alice-password")
        assert book(b, "pi-2", duration="2").status_code == 200
        (before,) = mine(agent, "pi-2")
        ref = f"1:{before['id']}"
        for text in ("-0", "-0.0", *LOOSE_HOURS):
            r = b.post("/manage/action", {"action": "extend", "sel": ref, "hours": text}, page="/manage")
            errors = re.findall(r'class="flash error"[^>]*>([^<]*)', r.text)
            assert errors and "Extend by (hours)" in html.unescape(errors[0]), (text, r.text)
            assert 'class="flash ok"' not in r.text, text
        (after,) = mine(agent, "pi-2")
        assert after["end"] == before["end"]
        r = b.post("/manage/action", {"action": "extend", "sel": ref, "hours": "1"}, page="/manage")
        assert 'class="flash ok"' in r.text, r.text
    (extended,) = mine(agent, "pi-2")
    gained = dt.datetime.fromisoformat(extended["end"]) - dt.datetime.fromisoformat(before["end"])
    assert gained == dt.timedelta(hours=1)


def test_configure_numbers_and_bin_are_refused_in_words(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as b:
        b.login(ALICE, "alice-password")
        for value in ("1_0", "１０", "٣"):
            data = {"bin": "nums", "r0.ref": "1:999999", "r0.__number": "size", "r0.size": value}
            r = b.post("/configure/deploy", data, page="/configure")
            assert r.status_code == 400 and "size: a number is expected" in r.text, (value, r.text)
        assert book(b, "pi-3").status_code == 200
        (it,) = mine(agent, "pi-3")
        data = {"bin": "c" * 100_000, "r0.ref": f"1:{it['id']}", "r0.environment": "tiny"}
        r = b.post("/configure/deploy", data, page="/configure")
        assert r.status_code == 400 and "The bin name takes at most 64 characters." in r.text, r.text
    (still,) = mine(agent, "pi-3")
    assert still["status"] == "configuring"


def test_admin_number_fields_are_read_strictly(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as b:
        b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        for port in (
            f"0_{agent.port}",
            str(agent.port).translate(str.maketrans("0123456789", "０１２３４５６７８９")),
        ):
            r = b.post("/admin/agents", {**add_agent_form("again", 1), "port": port}, page="/admin/agents")
            assert "The port is a number between 1 and 65535." in text_of(r), (port, r.text)
            assert 'data-agent="again"' not in b.get("/admin/agents").text
        # A query string with a digit int() cannot read ("²" is a digit to isdigit()).
        r = b.get("/admin/environments?agent=%C2%B2&edit=tiny")
        assert r.status_code == 200, r.text


def test_path_and_query_numbers_are_read_exactly(config: Path, agent: AgentProcess) -> None:
    """GET /manage/events/1/1_0 asked the agent for reservation 10 (a path segment read by
    pydantic's lax int()); " 5 " and "5\\n" were 5; "١" matched \\d in the selection's pattern."""
    with webui_client(config) as b:
        b.login(ALICE, "alice-password")
        assert book(b, "pi-5", duration="2").status_code == 200
        (it,) = mine(agent, "pi-5")
        rid = it["id"]
        assert b.get(f"/manage/events/1/{rid}").status_code == 200
        for text in (f"0_{rid}", f"%20{rid}%20", f"{rid}%0A", f"%09{rid}", "%D9%A1"):
            for url in (f"/manage/events/1/{text}", f"/manage/events/{text.replace(str(rid), '1')}/{rid}"):
                r = b.get(url)
                assert r.status_code == 422, (url, r.status_code)
        for days in ("1_0", "%202", "2%0A"):
            assert b.get(f"/reserve/calendar?days={days}").status_code == 422, days
        assert b.get("/reserve/calendar?days=3").status_code == 200
        # A selection written with other digits than 0-9 names no reservation.
        arabic = str(rid).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
        for sel in (f"1:{arabic}", f"١:{rid}", f"1:{rid} ", f" 1:{rid}"):
            r = b.post("/manage/action", {"action": "extend", "sel": sel, "hours": "1"}, page="/manage")
            assert "Select at least one node" in text_of(r), (sel, r.text)
        (same,) = mine(agent, "pi-5")
        assert same["end"] == it["end"]


def test_a_hand_typed_field_may_have_spaces_but_no_line_break(config: Path, agent: AgentProcess) -> None:
    with webui_client(config) as b:
        b.login(ALICE, "alice-password")
        for text in ("1\n", "\t1", "1\r\n", "\u00a01"):
            r = book(b, "pi-6", duration=text)
            assert r.status_code == 400 and "The duration" in text_of(r), (text, r.text)
        assert mine(agent, "pi-6") == []
        assert book(b, "pi-6", duration="  1.5 ").status_code == 200
        (it,) = mine(agent, "pi-6")
        start, end = (dt.datetime.fromisoformat(it[k]) for k in ("start", "end"))
        assert end - start == dt.timedelta(hours=1.5)
        ref = f"1:{it['id']}"
        r = b.post("/manage/action", {"action": "extend", "sel": ref, "hours": "1\n"}, page="/manage")
        assert "without line breaks or tabs around it" in text_of(r), r.text
        r = b.post("/manage/action", {"action": "extend", "sel": ref, "hours": " 1 "}, page="/manage")
        assert 'class="flash ok"' in r.text, r.text
    (extended,) = mine(agent, "pi-6")
    assert dt.datetime.fromisoformat(extended["end"]) - end == dt.timedelta(hours=1)


def _api_routes(routes: list[Any]) -> Iterator[Any]:
    """Every APIRoute, those of included routers too (newer FastAPI keeps them in the router)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def _loose_params(app: Any, expect: str) -> list[str]:
    """Every path or query parameter of `app` typed int or float without piseduce.numbers' reading
    (`expect`: a route that must be among those walked, so that the check cannot pass empty)."""
    loose, paths = [], set()
    for route in _api_routes(app.routes):
        paths.add(route.path)
        dependants = [route.dependant]
        while dependants:
            d = dependants.pop()
            dependants.extend(d.dependencies)
            for param in (*d.path_params, *d.query_params):
                info = param.field_info
                strict = any(type(m).__name__ == "BeforeValidator" for m in info.metadata)
                if info.annotation in (int, float) and not strict:
                    loose.append(f"{route.path} {param.name}")
    assert any(expect in p for p in paths), sorted(paths)
    return loose


def test_no_route_reads_a_number_loosely(tmp_path: Path, make_agent_config: Any) -> None:
    """The class, not the instances: every int or float of a path or a query string, in both
    services, goes through piseduce.numbers (StrictInt, StrictFloat)."""
    from piseduce.agent.app import create_app as agent_app
    from piseduce.config import load_webui_config
    from piseduce.webui.app import create_app as webui_app

    config = write_webui_config(tmp_path / "webui")
    assert _loose_params(webui_app(load_webui_config(config)), "/manage/events/") == []
    assert _loose_params(agent_app(make_agent_config()), "/api/reservations/{") == []  # the fake driver's
    for node_type, route in (("raspberry", "/ports/"), ("g5k", "/api/reservations/{"), ("iot-lab", "/api/")):
        app = agent_app(make_agent_config(node_type=node_type, driver=""))
        assert _loose_params(app, route) == [], node_type
