"""Every POST route of the web UI, fuzzed (issue 11, defect 7): zero 5xx, and no database
connection left behind by any answer. The routes come from the application (a new route is
covered without being listed), the cases from form_fuzz.py: bounded and the same every run."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.form_fuzz import (
    CASES_PER_ROUTE,
    Case,
    FormFields,
    cases,
    multipart_body,
    page_routes,
    post_routes,
    urlencoded_body,
)
from helpers.webui_fixtures import (
    AgentProcess,
    add_user,
    book_on,
    csrf_of,
    deployed_on,
    register_agent,
    write_webui_config,
)
from piseduce.config import load_webui_config
from piseduce.webui.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_argon2")]
# FUZZ_ROUTES=<regex> fuzzes only the routes it matches (to chase one failure).
# Routes that end the fuzzer's own session or remove what the others need go last.
LAST = ("/logout", "/admin/agents/{agent_id}/delete", "/admin/users/{user_id}/{action}")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    folder = tmp_path_factory.mktemp("fuzz") / "rpi-lab"
    a = AgentProcess(folder, nodes=6, driver="helpers.fuzz_driver:FuzzDriver")
    yield a
    a.stop()


class Session:
    """The fuzzer's browser: logged in as the admin, logged in again whenever a case ended it."""

    def __init__(self, client: Any) -> None:
        self.c = client
        self.csrf = ""

    def login(self) -> None:
        self.c.cookies.clear()
        page = self.c.get("/login")
        r = self.c.post("/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
                                        "csrf_token": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303, r.text[:300]
        self.csrf = csrf_of(self.c.get("/settings").text)

    def logged_in(self) -> bool:
        return bool(self.c.get("/settings", follow_redirects=False).status_code == 200)

    def send(self, case: Case) -> httpx.Response:
        if case.multipart or case.files or any(isinstance(v, bytes) for _, v in case.fields):
            body, kind = multipart_body(case, self.csrf)
        else:
            body, kind = urlencoded_body(case, self.csrf), "application/x-www-form-urlencoded"
        r: httpx.Response = self.c.post(case.path, content=body, headers={"content-type": kind},
                                        follow_redirects=False)
        return r


def crawl(s: Session, app: Any) -> FormFields:
    parser = FormFields()
    for path in page_routes(app):
        r = s.c.get(path)
        if r.status_code == 200 and "html" in r.headers.get("content-type", ""):
            parser.feed(r.text)
    return parser


def test_every_post_route_survives_the_fuzzer(tmp_path: Path, agent: AgentProcess) -> None:
    from starlette.testclient import TestClient

    cfg = write_webui_config(tmp_path / "webui", agent_timeout_seconds=2.0)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, "user@example.org", "user-password")
    register_agent(cfg, "rpi-lab", agent.port, "raspberry")
    # Bookings waiting for their deploy form, and one deployed: the Configure and Manage pages then
    # carry the forms of real cards (every field kind), which the fuzzer starts from.
    book_on(agent, ADMIN_EMAIL, ["pi-1", "pi-2"], bin="fuzz")
    deployed_on(agent, ADMIN_EMAIL, "pi-3")
    app = create_app(load_webui_config(cfg), health_checks=False, loop_guard="raise")
    engine = app.state.engine
    failures: list[str] = []
    sent: dict[str, int] = {}
    with TestClient(app, client=("127.0.0.1", 50000), raise_server_exceptions=False) as client:
        s = Session(client)
        # Anonymous first: every route refuses a visitor cleanly (CSRF, login), whatever is sent.
        s.csrf = csrf_of(client.get("/login").text)
        routes = [r for r in post_routes(app) if re.search(os.environ.get("FUZZ_ROUTES", ""), r.path)]
        for route in routes:
            for case in itertools.islice(cases(route, {}), 3):
                r = s.send(case)
                if r.status_code >= 500:
                    failures.append(f"anonymous {case.describe()}: {r.status_code}")
        s.login()
        pages = crawl(s, app)
        assert len(pages.forms) > 15  # the pages' forms were found
        routes.sort(key=lambda r: (r.path in LAST, LAST.index(r.path) if r.path in LAST else 0, r.path))
        assert len(routes) >= (25 if not os.environ.get("FUZZ_ROUTES") else 1)
        for route in routes:
            for case in itertools.islice(cases(route, pages.forms, pages.values), CASES_PER_ROUTE):
                r = s.send(case)
                sent[route.path] = sent.get(route.path, 0) + 1
                if r.status_code >= 500:
                    failures.append(f"{case.describe()}: {r.status_code} {r.text[:200]!r}")
                if engine.pool.checkedout():
                    failures.append(f"{case.describe()}: a database connection was left checked out")
                if not s.logged_in():
                    s.login()
    assert failures == []
    assert all(n == CASES_PER_ROUTE for n in sent.values()) and len(sent) == len(routes)
