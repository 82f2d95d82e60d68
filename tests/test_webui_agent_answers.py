"""What an agent answers cannot hurt the web UI (issue 11, defects 8 and 9): a huge answer is cut
at the web UI's cap and said in words, a malformed one is "answered something unexpected" (never
a 500), a long refusal stays out of the cookies and is shown bounded, and Add Agent asks a host
`/api/health` without the token and answers with a category of failure, never the host's words."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, TOKEN
from helpers.hostile_agent import OWNER, HostileAgent, banner_server, huge_nodes, nodes, reservation
from helpers.server_probes import HealthProbe, http_browser
from helpers.webui_fixtures import (
    WebuiProcess,
    add_agent_form,
    add_user,
    register_agent,
    webui_client,
    write_webui_config,
)
from piseduce.webui import node_lists


@pytest.fixture
def agent() -> Iterator[HostileAgent]:
    a = HostileAgent()
    yield a
    a.stop()


@pytest.fixture
def config(tmp_path: Path, agent: HostileAgent) -> Path:
    cfg = write_webui_config(tmp_path / "webui", agent_timeout_seconds=5)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, OWNER, "victim-password")
    register_agent(cfg, "hostile", agent.port, "raspberry")
    return cfg


@pytest.mark.slow
def test_a_huge_node_list_costs_the_cap_not_the_answer(config: Path, agent: HostileAgent) -> None:
    """A 22 MB /api/nodes made /reserve take 7.4 s and 136 MB of HTML and stalled /healthz for
    5.8 s on every page view."""
    agent.answer("GET /api/nodes", huge_nodes(22))
    web = WebuiProcess(config)
    try:
        user = http_browser(web.url)
        assert user.login(OWNER, "victim-password").status_code == 303
        with HealthProbe(web.url) as probe:
            for _ in range(3):
                t0 = time.perf_counter()
                page = user.get("/reserve")
                seconds = time.perf_counter() - t0
                assert page.status_code == 200
                assert seconds < 3, seconds
                assert len(page.content) < 200_000, len(page.content)
                assert "hostile: answered more than 2048 KiB to GET /api/nodes" in page.text
        assert probe.result.responsive(0.1), probe.result.summary()
    finally:
        web.stop()


@pytest.mark.slow
def test_a_big_valid_node_list_is_laid_out_off_the_event_loop(config: Path, agent: HostileAgent) -> None:
    """8000 nodes under the cap: the calendar is laid out and rendered in threads, so /healthz
    (and every other page) keeps being answered while it is built."""
    agent.answer("GET /api/nodes", json.dumps(nodes(8000)).encode())
    web = WebuiProcess(config)
    try:
        user = http_browser(web.url)
        assert user.login(OWNER, "victim-password").status_code == 303
        with HealthProbe(web.url) as probe:
            for _ in range(3):
                page = user.get("/reserve")
                assert page.status_code == 200 and "8000 nodes · times in" in page.text
        assert probe.result.responsive(0.1), probe.result.summary()
    finally:
        web.stop()


MALFORMED = {
    "GET /api/nodes": [{"name": 5, "properties": "many"}],
    "GET /api/schedule": {"nodes": {"n-1": [{"start": 5, "end": None}]}},
    "GET /api/reservations": [{**reservation(1, "n-1"), "step_index": "first", "actions": [{"x": 1}]}],
    "GET /api/admin/nodes": [{"name": "n-1", "properties": [1, 2]}],
    "GET /api/admin/switches": [{"name": "sw1", "port_count": "eight"}],
    "GET /api/admin/switches/sw1/ports": [{"port": "one", "status": "on", "power_w": "hot"}],
    "GET /api/admin/environments": [{"name": "e", "size": "big", "checksum": 5}],
    "GET /api/monitoring": {"series": "none"},
}


def test_malformed_answers_are_words_not_500s(config: Path, agent: HostileAgent) -> None:
    for route, value in MALFORMED.items():
        agent.answer(route, value)
    with webui_client(config) as admin:
        assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        pages = ["/reserve", "/reserve/calendar", "/manage", "/manage/bins", "/manage/updates", "/configure",
                 "/admin/nodes", "/admin/switches", "/admin/switches/1/ports/sw1", "/admin/environments",
                 "/monitoring", "/monitoring/data", "/env-factory"]
        for url in pages:
            r = admin.get(url)
            assert r.status_code == 200, (url, r.status_code)
        ports = admin.get("/admin/switches/1/ports/sw1").text
        assert "hostile: answered something unexpected to GET /api/admin/switches/sw1/ports" in ports
        assert "answered something unexpected to GET /api/nodes" in admin.get("/reserve").text
        assert "answered something unexpected to GET /api/admin/environments" in \
            admin.get("/admin/environments").text


def test_a_long_refusal_stays_out_of_cookies_and_is_shown_bounded(config: Path, agent: HostileAgent) -> None:
    """An 8 KB agent error used to come back as an 8 KB Set-Cookie."""
    agent.answer("GET /api/reservations", [{**reservation(1, "n-1"), "status": "configuring"}])
    long_detail = b'{"detail": "%s"}' % (b"no " * 2700)
    agent.answer("POST /api/reservations/1/destroy", (409, long_detail, "application/json"))
    with webui_client(config) as user:
        user.login(OWNER, "victim-password")
        r = user.post("/configure/cancel", {"sel": "1:1"}, page="/configure")
        assert r.status_code == 303
        assert sum(len(h) for h in r.headers.get_list("set-cookie")) < 200
        page = user.get("/configure").text
        assert "not cancelled — no no no" in page
        shown = page[page.index("not cancelled"):]
        assert shown.index("</div>") < 700  # the start of it, then "…"


def test_add_agent_asks_health_without_the_token_and_says_only_a_category(config: Path) -> None:
    # A service that is no agent (an SSH daemon, say): never sent the token, its banner never shown.
    sock, received, _thread = banner_server(b"SSH-2.0-OpenSSH_9.2 SECRET-BANNER\r\n")
    port = sock.getsockname()[1]
    try:
        with webui_client(config) as admin:
            admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            r = admin.post("/admin/agents", add_agent_form("ssh", port), page="/admin/agents")
            assert r.status_code == 400
            assert "SECRET-BANNER" not in r.text and "OpenSSH" not in r.text
            assert f"Agent not added: 127.0.0.1:{port}" in r.text
    finally:
        sock.close()
    assert received and not any(TOKEN.encode() in data for data in received), received


def test_add_agent_refuses_a_web_service_that_is_no_agent(config: Path, agent: HostileAgent) -> None:
    with webui_client(config) as admin:
        admin.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        cases = [
            ((500, b"Traceback: INTERNAL-SECRET at /srv/app.py", "text/plain"), "is not a PiSeduce agent"),
            ((200, b"<html>INTERNAL-SECRET intranet</html>", "text/html"), "is not a PiSeduce agent"),
        ]
        for answer, words in cases:
            agent.script.seen.clear()
            agent.answer("GET /api/health", answer)
            r = admin.post("/admin/agents", add_agent_form("web", agent.port), page="/admin/agents")
            assert r.status_code == 400 and words in r.text and "INTERNAL-SECRET" not in r.text
            assert [(m, p) for m, p, _ in agent.script.seen] == [("GET", "/api/health")]
            assert not any("authorization" in headers for _, _, headers in agent.script.seen)
        # A health answer like an agent's, then an /api/info that is not: refused, in words.
        agent.answer("GET /api/health", {"status": "ok"})
        agent.answer("GET /api/info", {"detail": "INTERNAL-SECRET"})
        r = admin.post("/admin/agents", add_agent_form("web", agent.port), page="/admin/agents")
        assert r.status_code == 400 and "is not a PiSeduce agent" in r.text
        assert "INTERNAL-SECRET" not in r.text
        # A real agent's answers: connected.
        agent.script.normal()
        r = admin.post("/admin/agents", add_agent_form("web", agent.port), page="/admin/agents")
        assert r.status_code == 303


PAGES = ["/reserve", "/reserve/calendar", "/manage", "/manage/bins", "/manage/updates", "/configure",
         "/admin/nodes", "/admin/switches", "/admin/switches/1/ports/sw1", "/admin/environments",
         "/admin/agents", "/monitoring", "/monitoring/data", "/env-factory", "/settings"]


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _nested(levels: int) -> object:
    value: object = "bottom"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [500_000, 5_000])
def test_deeply_nested_answers_are_words_not_500s(config: Path, agent: HostileAgent, levels: int) -> None:
    """1 MB of '[[[[…' on every route broke almost every page for every user (RecursionError in
    json.loads was not caught)."""
    for route in list(agent.script.routes):
        if route != "GET /api/health":
            agent.answer(route, _deep(levels))
    with webui_client(config) as admin:
        assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        for url in PAGES:
            r = admin.get(url)
            assert r.status_code == 200, (url, r.status_code)
        assert "hostile: answered something unexpected to GET /api/nodes" in admin.get("/reserve").text
        assert "answered something unexpected to GET /api/reservations" in admin.get("/manage").text


def test_deep_values_inside_free_form_fields_are_refused(config: Path, agent: HostileAgent) -> None:
    """JSON that decodes (900 levels) but sits in the protocol's free-form fields (node
    properties, connection, params, a form field's default): refused whole, never handed to a
    template, a serialiser or the database that would recurse on it."""
    deep = _nested(900)
    agent.answer("GET /api/nodes", [{"name": "n-1", "properties": {"model": deep}, "status": "available"}])
    agent.answer("GET /api/reservations", [{**reservation(1, "n-1"), "connection": {"ssh": deep},
                                            "params": {"x": deep}}])
    agent.answer("GET /api/admin/nodes", [{"name": "n-1", "properties": {}, "attrs": {"a": deep}}])
    agent.answer("GET /api/info", {"name": "hostile", "node_type": "raspberry", "site": "h", "version": "1",
                                   "labels": {"x": deep}})
    with webui_client(config) as admin:
        assert admin.login(ADMIN_EMAIL, ADMIN_PASSWORD).status_code == 303
        for url in PAGES:
            r = admin.get(url)
            assert r.status_code == 200, (url, r.status_code)
        assert "answered something unexpected to GET /api/nodes" in admin.get("/reserve").text
        assert "answered something unexpected to GET /api/reservations" in admin.get("/manage").text
        r = admin.post("/admin/agents/1/check", {}, page="/admin/agents")
        assert r.status_code in (200, 303), r.status_code
        assert admin.get("/admin/agents").status_code == 200


def test_a_big_answer_is_reused_only_while_it_is_byte_for_byte_the_same(
    config: Path, agent: HostileAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web UI keeps the last big answers decoded (webui/answer_memo.py): a node list that
    changed is read again, and a malformed one after a good one is refused like any other."""
    # Each page asks the agent (no node list shared for seconds: webui/node_lists.py).
    monkeypatch.setattr(node_lists, "TTL", 0.0)
    agent.answer("GET /api/nodes", json.dumps(nodes(400)).encode())
    with webui_client(config) as b:
        assert b.login(OWNER, "victim-password").status_code == 303
        for _ in range(2):  # the second is the remembered one: the same page
            page = b.get("/reserve").text
            assert 'data-total="400"' in page and 'data-key="1/n-0"' in page
        agent.answer("GET /api/nodes", json.dumps(nodes(401)[1:]).encode())  # n-0 is gone
        page = b.get("/reserve").text
        assert 'data-total="400"' in page and 'data-key="1/n-0"' not in page and 'data-key="1/n-1"' in page
        bad = json.dumps(nodes(400)).replace('"status": "available"', '"status": 7', 1).encode()
        agent.answer("GET /api/nodes", bad)
        page = b.get("/reserve").text
        assert "answered something unexpected to GET /api/nodes" in page and 'data-total="0"' in page
