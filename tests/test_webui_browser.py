"""End to end in headless Chromium: the web UI served by `piseduce webui serve`, real agents.

1. With the fake-driver agent: sign up, a pending login refused, admin approval, Add Agent,
   SSH key, reserve 2 nodes by clicking, configure with "apply to all", deploy, the manage page
   reaching `deployed` without reloading, destroy; a dead agent shown while the page stays fast.
   Screenshots of every page go to docs/img/.
2. With the raspberry driver against `piseduce sim rpi`: the same path to `deployed`, then a real
   `ssh` login with the user's key, then destroy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import free_port, piseduce_cmd, subprocess_env, wait_http
from helpers.browser_helpers import ARGS, CHROMIUM, SHOTS
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, TOKEN
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import AgentProcess, SilentPort, WebuiProcess, add_user, write_webui_config

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ADMIN_HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "X-Piseduce-User": "root@example.org",
    "X-Piseduce-Role": "admin",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def new_page(browser: Any, tz: str = "Europe/Paris") -> Any:
    ctx = browser.new_context(timezone_id=tz, viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda d: d.accept())  # every confirmation is accepted (and was asked)
    return page


def login(page: Any, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=False)


def user_keypair(folder: Path) -> tuple[Path, str]:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="student@laptop")
    path = folder / "id_student"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    return path, key.export_public_key().decode().strip()


def signup_and_approval(browser: Any, url: str, email: str, password: str) -> Any:
    """Sign up in the browser, be refused while pending, get approved by the admin; returns the
    user's page, logged in."""
    page = new_page(browser)
    page.goto(f"{url}/signup")
    page.fill("#email", email)
    page.fill("#password", password)
    page.fill("#confirm", password)
    page.click("button[type=submit]")
    page.wait_for_selector("text=administrator must approve")
    login(page, url, email, password)
    page.wait_for_selector("text=Login failed: wrong email or password, or the account is not approved yet.")

    admin = new_page(browser)
    login(admin, url, ADMIN_EMAIL, ADMIN_PASSWORD)
    admin.goto(f"{url}/admin/users")
    admin.click(f'tr[data-email="{email}"] button:has-text("Approve")')
    admin.wait_for_selector(f"text={email} can now log in.")
    admin.context.close()

    login(page, url, email, password)
    page.wait_for_url(f"{url}/reserve")
    return page


def submit_agent_form(page: Any, name: str, port: int) -> None:
    """On the (admin) Agents page: adds the agent on loopback `port`, waits until it is connected."""
    page.fill("#a-name", name)
    page.fill("#a-host", "127.0.0.1")
    page.fill("#a-port", str(port))
    page.fill("#a-token", TOKEN)
    page.click("#add-agent button[type=submit]")
    page.locator(f'tr[data-agent="{name}"] >> text=connected').wait_for()


def add_agent(browser: Any, url: str, name: str, port: int, screenshot: str | None = None) -> None:
    admin = new_page(browser)
    login(admin, url, ADMIN_EMAIL, ADMIN_PASSWORD)
    admin.click("text=(admin) Agents")
    submit_agent_form(admin, name, port)
    if screenshot:
        shot(admin, screenshot)
    admin.context.close()


def set_ssh_key(page: Any, url: str, pub: str, screenshot: str | None = None) -> None:
    page.goto(f"{url}/settings")
    page.click("text=SSH key")
    page.fill("#keys", pub)
    page.click('button:has-text("Add keys")')
    page.wait_for_selector("text=1 key(s) added.")
    if screenshot:
        shot(page, screenshot)


def reserve_two(
    page: Any, url: str, agent_id: int, nodes: tuple[str, str], screenshot: str | None = None
) -> None:
    page.goto(f"{url}/reserve")
    for n in nodes:
        page.click(f'.cal-row[data-key="{agent_id}/{n}"] .cal-name .node')
    assert page.inner_text("#sel-count") == "2"
    page.fill("#b-bin", "exp1")
    page.click("#b-submit")
    page.wait_for_selector(".booking-result .booked >> nth=1")
    assert page.locator(".booking-result .booked").count() == 2
    if screenshot:
        page.locator(".cal-bar.mine").first.wait_for()
        shot(page, screenshot)
    page.click("#go-configure")
    page.wait_for_url(f"{url}/configure")


def configure_and_deploy(page: Any, url: str, fill: dict[str, str], screenshot: str | None = None) -> None:
    cards = page.locator(".card")
    assert cards.count() == 2
    first = cards.nth(0)
    for name, value in fill.items():
        el = first.locator(
            f'[data-field="{name}"] select, [data-field="{name}"] input:not([type=hidden])'
        ).first
        if el.evaluate("e => e.tagName") == "SELECT":
            el.select_option(value)
        else:
            el.fill(value)
    first.locator(".apply-all").click()
    for name, value in fill.items():
        other = cards.nth(1).locator(
            f'[data-field="{name}"] select, [data-field="{name}"] input:not([type=hidden])'
        )
        assert other.first.input_value() == value
    page.fill("#bin-0", "exp1")
    if screenshot:
        shot(page, screenshot)
    page.click("#deploy")
    page.wait_for_url(f"{url}/manage")


def watch_until_deployed(page: Any, timeout_ms: int, screenshot: str | None = None) -> None:
    page.evaluate("window.__sameDocument = 'yes'")
    page.wait_for_function(
        "() => { const s = [...document.querySelectorAll('.live[data-status]')].map(e => e.dataset.status);"
        " return s.length === 2 && s.every(x => x === 'deployed'); }",
        timeout=timeout_ms,
    )
    # Live updates, not a reload: the marker set on this document is still there.
    assert page.evaluate("window.__sameDocument") == "yes"
    assert page.locator(".conn.ssh").count() == 2
    page.locator("details summary").first.click()
    page.locator(".events li").first.wait_for()
    if screenshot:
        shot(page, screenshot)


def destroy_all(page: Any) -> None:
    page.check(".select-bin")
    page.select_option("#m-action", "destroy")
    page.click("#m-run")
    page.wait_for_selector("#action-result .flash.ok >> nth=1")
    assert page.locator("#action-result .flash.error").count() == 0
    page.wait_for_function(
        "() => [...document.querySelectorAll('.live[data-status]')]"
        ".every(e => e.dataset.status !== 'deployed')"
    )


# ---------------------------------------------------------------- 1. fake-driver agent


def test_browser_flow_with_fake_agent(browser: Any, tmp_path: Path) -> None:
    cfg = write_webui_config(tmp_path / "webui", agent_timeout_seconds=1.0, health_check_seconds=2)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    webui = WebuiProcess(cfg)
    agent = AgentProcess(tmp_path / "rpi-lab", nodes=4)
    silent = SilentPort()
    try:
        anon = new_page(browser)
        anon.goto(f"{webui.url}/login")
        shot(anon, "login.png")
        anon.context.close()
        add_agent(browser, webui.url, "rpi-lab", agent.port, screenshot=None)
        page = signup_and_approval(browser, webui.url, "student@example.org", "student-password")
        _key, pub = user_keypair(tmp_path)
        set_ssh_key(page, webui.url, pub, screenshot="settings.png")
        reserve_two(page, webui.url, 1, ("pi-1", "pi-2"), screenshot="reserve.png")
        configure_and_deploy(page, webui.url, {"environment": "big"}, screenshot="configure.png")
        watch_until_deployed(page, 30_000, screenshot="manage.png")
        destroy_all(page)

        # A hung agent: shown as unreachable, the pages stay fast.
        from piseduce import crypto
        from piseduce.config import load_webui_config
        from piseduce.db import make_engine, session_factory
        from piseduce.webui.models import Agent

        conf = load_webui_config(cfg)
        engine = make_engine(conf.database_url)
        with session_factory(engine)() as s, s.begin():
            s.add(
                Agent(
                    name="hung-site",
                    host="127.0.0.1",
                    port=silent.port,
                    node_type="raspberry",
                    token=crypto.encrypt_str(crypto.load_fernet(conf.key_path), TOKEN),
                    status="connected",
                )
            )
        engine.dispose()
        for path in ("/reserve", "/manage", "/configure"):
            t0 = time.monotonic()
            page.goto(f"{webui.url}{path}")
            # One 1 s deadline and the page, with room for a loaded machine (5.5 s seen at load
            # 11); an agent waited for without a deadline never lets the page load at all.
            assert time.monotonic() - t0 < 8.0, path
            assert page.locator("text=Agent hung-site: unreachable").count() >= 1
        admin = new_page(browser)
        login(admin, webui.url, ADMIN_EMAIL, ADMIN_PASSWORD)
        admin.goto(f"{webui.url}/admin/agents")
        admin.locator('tr[data-agent="hung-site"] .badge.agent-unreachable').wait_for()
        shot(admin, "admin_agents.png")
        admin.context.close()
    finally:
        silent.close()
        agent.stop()
        webui.stop()


# ---------------------------------------------------------------- 2. raspberry driver + simulator


class RaspberrySite:
    """`piseduce sim rpi` with 2 boards and a raspberry agent (api + exec) registered on it."""

    def __init__(self, folder: Path) -> None:
        import asyncssh

        from piseduce import db
        from piseduce.config import load_agent_config
        from piseduce.sim.images import build_environment

        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        base = folder / "sim"
        base.mkdir(parents=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="piseduce-agent")
        agent_key = folder / "agent_key"
        agent_key.write_bytes(key.export_private_key())
        agent_key.chmod(0o600)
        (folder / "agent_key.pub").write_text(key.export_public_key().decode())
        inventory_file = folder / "inventory.json"
        self.env_dir = folder / "environments"
        self.env_dir.mkdir()
        env = build_environment(self.env_dir, "raspios", size_mb=56, compress="gz")
        (self.env_dir / f"{env['image']}.json").write_text(json.dumps(env))
        self.env_name = env["name"]
        self._spawn(
            "sim.log",
            "sim",
            "rpi",
            "--boards",
            "2",
            "--state-dir",
            str(base / "state"),
            "--tftp-root",
            str(folder / "tftpboot"),
            "--nfs-root",
            str(folder / "nfs"),
            "--time-scale",
            "100",
            "--boot-delay",
            "20",
            "--seed",
            "1",
            "--inventory-file",
            str(inventory_file),
            "--agent-pubkey",
            str(folder / "agent_key.pub"),
        )
        wait_until_sync(lambda: inventory_file.exists() and inventory_file.stat().st_size > 0, timeout=30)
        time.sleep(0.2)
        self.inventory = json.loads(inventory_file.read_text())
        self.port = free_port()
        config = folder / "config_agent.json"
        config.write_text(
            json.dumps(
                {
                    "auth_token": [TOKEN],
                    "port_number": self.port,
                    "host": "127.0.0.1",
                    "node_type": "raspberry",
                    "name": "rpi-sim",
                    "db_url": "sqlite:///agent.db",
                    "tftp_root": "tftpboot",
                    "nfs_root": "nfs",
                    "env_path": "environments/",
                    "ssh_key_file": str(agent_key),
                    "timeout_scale": 0.02,
                    "poll_interval": 0.05,
                    "turnaround_minutes": 0,
                    "lease_seconds": 30,
                }
            )
        )
        db.upgrade("agent", load_agent_config(config).database_url)
        self._spawn("api.log", "agent", "api", str(config))
        self._spawn("exec.log", "agent", "exec", str(config))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.url}/api/health", timeout=30)
        with httpx.Client(base_url=self.url, headers=ADMIN_HEADERS, timeout=30) as c:
            r = c.post("/api/admin/switches", json=self.inventory["switch"])
            assert r.status_code == 201, r.text
            for b in self.inventory["boards"]:
                body = {
                    k: b[k] for k in ("name", "ip", "switch", "port", "ssh_port", "model", "serial", "mac")
                }
                body["host_key"] = b["nfs_host_key"]
                r = c.post("/api/admin/nodes", json=body)
                assert r.status_code == 201, r.text
            r = c.post("/api/admin/environments/scan")
            assert r.status_code == 200 and self.env_name in r.json()["added"], r.text

    def _spawn(self, log: str, *args: str) -> None:
        out = open(self.folder / log, "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                piseduce_cmd(*args),
                cwd=self.folder,
                env=subprocess_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )

    def board(self, name: str) -> dict[str, Any]:
        return next(b for b in self.inventory["boards"] if b["name"] == name)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_browser_raspberry_end_to_end(browser: Any, tmp_path: Path) -> None:
    pytest.importorskip("piseduce.agent.drivers.raspberry.driver")
    pytest.importorskip("piseduce.sim.rpi.cluster")
    pytest.importorskip("piseduce.sim.images")
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed (apt-get install openssh-client)")
    cfg = write_webui_config(tmp_path / "webui", agent_timeout_seconds=1.5, health_check_seconds=2)
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    site = RaspberrySite(tmp_path / "site")
    webui = WebuiProcess(cfg)
    try:
        page = signup_and_approval(browser, webui.url, "pi-user@example.org", "pi-user-password")
        add_agent(browser, webui.url, "rpi-sim", site.port)
        key, pub = user_keypair(tmp_path)
        set_ssh_key(page, webui.url, pub)
        reserve_two(page, webui.url, 1, ("pi-1", "pi-2"))
        configure_and_deploy(page, webui.url, {"environment": site.env_name, "part_size": "whole"})
        watch_until_deployed(page, 120_000)
        # The exact command the page shows, run for real with the user's key.
        card = page.locator(".node-card[data-node='pi-1']")
        command = card.locator(".conn.ssh").inner_text().split()
        assert command[0] == "ssh"
        # The user guide: append the known_hosts line Manage shows, then SSH checks the host key.
        line = card.locator("code.known-hosts").inner_text().strip()
        assert card.locator("button.copy").get_attribute("data-copy") == line
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(line + "\n")
        # Whether a password is set, not the password itself (the page may be on a shared screen).
        info = card.locator(".conn-info").inner_text()
        assert "password: set" in info, info
        assert not card.locator(".os-password").is_visible()
        out = subprocess.run(
            [
                command[0],
                "-i",
                str(key),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "ConnectTimeout=10",
                *command[1:],
                "hostname",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() and out.stdout.strip() != "nfspi"
        destroy_all(page)
    finally:
        webui.stop()
        site.stop()
