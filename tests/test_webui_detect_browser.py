"""The browser test of node detection: an admin opens the Nodes page of a raspberry agent on the
simulated cluster (real mode: the boards on their own network), chooses ports, presses Detect,
sees each port's progress and the result, with screenshots at phone and desktop widths."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from helpers.admin_infra_fixtures import RaspberryAgent
from helpers.browser_helpers import SHOTS
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD
from helpers.rpi_fixtures import require_real_mode
from helpers.webui_fixtures import WebuiProcess, add_user, write_webui_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_argon2")]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[RaspberryAgent]:
    require_real_mode()
    folder = tmp_path / "rpi"
    folder.mkdir()
    a = RaspberryAgent(folder, board_network=True)
    yield a
    a.stop()


def test_detect_from_the_nodes_page(tmp_path: Path, lab: RaspberryAgent) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is not installed")
    from test_webui_browser import ARGS, login, submit_agent_form

    config = write_webui_config(tmp_path / "webui", agent_timeout_seconds=5)
    add_user(config, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    web = WebuiProcess(config)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1000},
                                           timezone_id="America/Montreal").new_page()
                page.set_default_timeout(20_000)
                login(page, web.url, ADMIN_EMAIL, ADMIN_PASSWORD)
                page.goto(f"{web.url}/admin/agents")
                submit_agent_form(page, "rpi-lab", lab.port)

                page.goto(f"{web.url}/admin/nodes")
                panel = page.locator('[data-agent="rpi-lab"]')
                panel.locator('summary:has-text("Detect nodes")').click()
                panel.locator('input[name="ports"]').fill("1-2")
                panel.locator('input[name="pattern"]').fill("lab-{port}")
                panel.locator('form[id^="detect-form-"] button:has-text("Detect")').click()
                page.wait_for_selector("text=Detecting ports 1-2")
                job = panel.locator(".detection").first
                steps = "rows => rows.map(r => r.dataset.step)"
                first_steps = job.locator("tr[data-port]").evaluate_all(steps)
                # the page shows the ports while they are being detected (a board boots in seconds)
                assert len(first_steps) == 2 and set(first_steps) - {"registered", "failed"}, first_steps
                page.locator('.detection[data-done="yes"]').wait_for()
                rows = page.locator('.detection[data-done="yes"] tr[data-port]')
                assert rows.evaluate_all(steps) == ["registered", "registered"]
                text = page.locator('.detection[data-done="yes"]').inner_text()
                for i in (0, 1):
                    assert lab.board(i)["serial"] in text and lab.board(i)["mac"] in text
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "admin_detect.png"), full_page=True)
                page.set_viewport_size({"width": 390, "height": 900})
                page.screenshot(path=str(SHOTS / "phone_admin_detect.png"), full_page=True)
                # the nodes are registered: the table shows them after a reload, and so does the job
                page.click("a.reload-nodes")
                page.wait_for_selector('tr[data-node="lab-1"]')
                assert page.locator('tr[data-node="lab-1"]').count() == 1
                assert page.locator('tr[data-node="lab-2"]').count() == 1
                assert page.locator('.detection[data-done="yes"]').count() == 1
                # Each run says when it started, in the viewer's zone (America/Montreal here).
                started = page.locator(".detection time.t").first
                utc = dt.datetime.fromisoformat(str(started.get_attribute("data-utc")).replace("Z", "+00:00"))
                assert abs((dt.datetime.now(dt.UTC) - utc).total_seconds()) < 600, utc
                local = utc.astimezone(ZoneInfo("America/Montreal"))
                shown = started.inner_text()
                hours = (f"{local:%H}", f"{local:%I}".lstrip("0"))  # 24 h or 12 h, as the locale writes it
                assert f":{local:%M}" in shown and any(h in shown for h in hours), shown
                print(f"first steps seen: {first_steps}")
            finally:
                browser.close()
    finally:
        web.stop()


@pytest.mark.parametrize(("text", "ports"),
                         [("1-4, 6", [1, 2, 3, 4, 6]), ("3", [3]), (" 2 ,5-6 ", [2, 5, 6])])
def test_ports_field(text: str, ports: list[int]) -> None:
    from piseduce.webui.routes.admin_nodes import parse_ports

    assert parse_ports(text) == ports


# "١-٤" and "１": digits int() would read (Arabic-Indic, fullwidth), not ASCII ones (numbers.py).
@pytest.mark.parametrize("text", ["", "a", "1;2", "4-2", "1-9999", "-3", "1,,2", "١-٤", "１", "2\n"])
def test_ports_field_refuses(text: str) -> None:
    from piseduce.webui.routes.admin_nodes import parse_ports
    from piseduce.webui.routes.infra_forms import FormError

    with pytest.raises(FormError):
        parse_ports(text)


# What an admin reads for a wrong ports field (issue 16 testers): the switch's port range, and which
# way a range goes.
@pytest.mark.parametrize(("text", "count", "words"), [
    ("1-99999", 8, "switch sw1 has ports 1 to 8; 1-99999 is not within them"),
    ("9", 8, "switch sw1 has ports 1 to 8"),
    ("0-2", 8, "switch sw1 has ports 1 to 8"),
    ("1-99999", None, "a switch's ports are numbered 1 to 256 at most"),
    ("8-1", 8, "a range goes up (8-1 → 1-8)"),
    (" 8 - 1 ", None, "a range goes up (8-1 → 1-8)"),
])
def test_ports_field_says_what_is_wrong(text: str, count: int | None, words: str) -> None:
    from piseduce.webui.routes.admin_nodes import parse_ports
    from piseduce.webui.routes.infra_forms import FormError

    with pytest.raises(FormError) as err:
        parse_ports(text, count, "sw1")
    assert words in str(err.value), err.value
    assert parse_ports("1-8", count or 256, "sw1") == list(range(1, 9))
