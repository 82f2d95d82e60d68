"""The site of the browser tests of issue 10 (test_webui_sequences.py, test_webui_oversight.py):
the web UI served by `piseduce webui serve` and two fake-driver agents in child processes (a
raspberry-like lab of 12 boards and a site announcing itself as g5k, whose servers have `cores`),
one per test module; each test logs in as its own user, so the reservations of one never meet
another's. Chromium is Debian's, headless."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import headers, node_body
from helpers.browser_helpers import ARGS, CHROMIUM
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD
from helpers.webui_fixtures import AgentProcess, WebuiProcess, add_user, register_agent, write_webui_config

sync_api = pytest.importorskip("playwright.sync_api")

PASSWORD = USER_PASSWORD
_users = itertools.count(1)


@dataclass
class Site:
    url: str
    rpi: AgentProcess
    g5k: AgentProcess
    rpi_id: int
    g5k_id: int
    config: Path
    root: Path

    def api(self, agent: AgentProcess, method: str, path: str, user: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{agent.url}{path}", headers=headers(user), timeout=10, **kw)

    def mine(self, agent: AgentProcess, user: str, status: str = "active") -> list[dict[str, Any]]:
        r = self.api(agent, "GET", "/api/reservations", user, params={"status": status})
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    root = tmp_path_factory.mktemp("sequences")
    # Every test logs in (several times a minute from 127.0.0.1): above the login rate limit.
    cfg = write_webui_config(
        root / "webui", agent_timeout_seconds=3.0, health_check_seconds=2, login_free_failures=100
    )
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    # Whatever fails while starting, what was started is stopped (in reverse order).
    with contextlib.ExitStack() as started:
        rpi = AgentProcess(root / "rpi-lab", nodes=12, driver="helpers.env_factory_driver:FactoryDriver")
        started.callback(rpi.stop)
        # A g5k agent reads forwarded credentials with the web UI's key file.
        (root / "g5k-nancy").mkdir()
        (root / "g5k-nancy" / "secret.key").write_bytes((root / "webui" / "secret.key").read_bytes())
        # Its deploy form says what the g5k driver's does (a long URL in a help text).
        g5k = AgentProcess(root / "g5k-nancy", nodes=0, node_type="g5k",
                           driver="helpers.fake_driver:G5kFormDriver")
        started.callback(g5k.stop)
        for i, cores in ((1, 8), (2, 16), (3, 32), (4, 32)):
            r = httpx.post(
                f"{g5k.url}/api/admin/nodes",
                json=node_body(f"grisou-{i}", "Dell R640", cores=cores),
                headers=headers("root@example.org", admin=True),
                timeout=10,
            )
            assert r.status_code == 201, r.text
        rpi_id = register_agent(cfg, "rpi-lab", rpi.port, "raspberry")
        g5k_id = register_agent(cfg, "g5k-nancy", g5k.port, "g5k", site="nancy")
        webui = WebuiProcess(cfg)
        started.callback(webui.stop)
        yield Site(webui.url, rpi, g5k, rpi_id, g5k_id, cfg, root)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def new_user(site: Site, role: str = "user") -> str:
    email = f"user{next(_users)}@example.org"
    add_user(site.config, email, PASSWORD, role=role)
    return email


def open_page(browser: Any, site: Site, email: str, *, tz: str = "Europe/Paris", width: int = 1400) -> Any:
    ctx = browser.new_context(timezone_id=tz, viewport={"width": width, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda d: d.accept())
    page.goto(f"{site.url}/login")
    page.fill("#email", email)
    page.fill("#password", ADMIN_PASSWORD if email == ADMIN_EMAIL else PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/reserve")
    # The first page of a session redraws its calendar in the browser's zone: let it settle first.
    page.wait_for_load_state("networkidle")
    return page


def add_filter(page: Any, prop: str, op: str, value: str) -> None:
    page.fill("#f-prop", prop)
    page.select_option("#f-op", op)
    page.fill("#f-value", value)
    page.click("#f-add")
    # Added: the filter row is blank again for the next one (property, operator and value).
    blank = (page.input_value("#f-prop"), page.input_value("#f-op"), page.input_value("#f-value"))
    assert blank == ("", "=", ""), blank


def booked_nodes(page: Any) -> list[str]:
    page.wait_for_selector(".booking-result")
    return sorted(t.split(" on ")[0] for t in page.locator(".booking-result .booked").all_inner_texts())


def set_node_attrs(agent: AgentProcess, node: str, **attrs: Any) -> None:
    """The fake driver's behaviour knobs live in the node's attrs (read by the executor)."""
    from piseduce.agent.models import Node
    from piseduce.config import load_agent_config
    from piseduce.db import make_engine, session_factory, write_session

    engine = make_engine(load_agent_config(agent.config, check_files=False).database_url)
    with write_session(session_factory(engine)) as s:
        row = s.get(Node, node)
        assert row is not None
        row.attrs = {**{k: v for k, v in (row.attrs or {}).items() if k not in attrs}, **attrs}
        row.updated_at = dt.datetime.now(dt.UTC)
    engine.dispose()
