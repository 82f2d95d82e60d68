"""A user outside the lab reaches their board through the agent's SSH gateway as the web UI and
pisctl tell them to: the agent advertises its gateway (/api/info), the user API's reservation
carries the `ssh -J` line, the ~/.ssh/config block and its known_hosts, `pisctl ssh-config` prints
the block, and OpenSSH with that block (`ssh -F`, StrictHostKeyChecking yes, both keys pinned)
reaches the board through a running `piseduce agent gateway`; `pisctl ssh` goes the same way."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers.agent_helpers import free_port
from helpers.pisctl_helpers import SshNode, User, make_token, user_key
from helpers.sequences_fixtures import set_node_attrs
from helpers.webui_fixtures import (
    AgentProcess,
    WebuiProcess,
    add_user,
    piseduce_cmd,
    register_agent,
    subprocess_env,
    write_webui_config,
)

pytestmark = pytest.mark.slow

ALICE = "alice@example.org"


@dataclass
class Lab:
    url: str
    config: Path
    agent: AgentProcess
    gw_port: int


def set_account_key(config: Path, email: str, pub: str) -> None:
    """The key in the user's Settings: the user API deploys with it when the form names none."""
    from sqlalchemy import select

    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui.models import User

    engine = make_engine(load_webui_config(config).database_url)
    with write_session(session_factory(engine)) as s:
        user = s.scalar(select(User).where(User.email == email))
        assert user is not None
        user.ssh_keys = [pub]
    engine.dispose()


def set_node_ip(agent: AgentProcess, node: str, ip: str) -> None:
    from piseduce.agent.models import Node
    from piseduce.config import load_agent_config
    from piseduce.db import make_engine, session_factory, write_session

    engine = make_engine(load_agent_config(agent.config, check_files=False).database_url)
    with write_session(session_factory(engine)) as s:
        row = s.get(Node, node)
        assert row is not None
        row.ip = ip
    engine.dispose()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("gwcli")
    cfg = write_webui_config(root / "webui", agent_timeout_seconds=3.0, health_check_seconds=1)
    add_user(cfg, ALICE, "a-user-password")
    gw_port = free_port()
    with contextlib.ExitStack() as started:
        agent = AgentProcess(
            root / "rpi-lab",
            nodes=3,
            gateway_public_host="127.0.0.1",
            gateway_port=gw_port,
            gateway_poll_seconds=0.5,
        )
        started.callback(agent.stop)
        log = open(root / "gateway.log", "ab")  # noqa: SIM115 - closed below
        started.callback(log.close)
        gw = subprocess.Popen(
            piseduce_cmd("agent", "gateway", str(agent.config)),
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        agent.procs.append(gw)  # stopped with the agent's processes
        register_agent(cfg, "rpi-lab", agent.port, "raspberry")
        webui = WebuiProcess(cfg)
        started.callback(webui.stop)
        yield Lab(webui.url, cfg, agent, gw_port)


def ssh_with(cfg: Path) -> subprocess.CompletedProcess[str]:
    """OpenSSH with the ~/.ssh/config block `cfg`, running `uname -n` on pi-1."""
    return subprocess.run(
        ["ssh", "-F", str(cfg), "pi-1", "uname", "-n"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_block_pisctl_prints_reaches_the_board_through_the_gateway(lab: Lab, tmp_path: Path) -> None:
    alice = User(tmp_path / "alice")
    alice.login(lab.url, make_token(lab.config, ALICE))
    identity, pub = user_key(tmp_path)
    board = SshNode("pi-1", pub)
    try:
        set_node_attrs(lab.agent, "pi-1", ssh_port=board.port, ssh_user="pi", host_key=board.key_line)
        set_node_ip(lab.agent, "pi-1", "127.0.0.1")
        assert alice.run("reserve", "--nodes", "rpi-lab/pi-1", "--hours", "1", "--bin", "gw").code == 0
        set_account_key(lab.config, ALICE, pub)
        ran = alice.run("deploy", "--bin", "gw", "--env", "tiny", "--wait", timeout=180)
        assert ran.code == 0, ran.err
        token = make_token(lab.config, ALICE, "read", "gw test")
        r = httpx.get(
            f"{lab.url}/api/v1/reservations", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        (res,) = [x for x in r.json() if x["node"] == "pi-1" and x["status"] == "deployed"]
        gw = res["connection"]["gateway"]
        assert gw["command"] == f"ssh -J jump@127.0.0.1:{lab.gw_port} -p {board.port} pi@127.0.0.1"
        assert f"[127.0.0.1]:{board.port} {board.key_line}" in gw["known_hosts"]

        known = tmp_path / "pinned"
        printed = alice.run("ssh-config", "pi-1", "--known-hosts", str(known))
        assert printed.code == 0, printed.err
        block = printed.out
        assert block == gw["ssh_config"].replace(gw["known_hosts_file"], str(known))
        assert "StrictHostKeyChecking yes" in block and f"HostName 127.0.0.1\n  Port {lab.gw_port}" in block
        assert known.read_text() == gw["known_hosts"] and known.stat().st_mode & 0o777 == 0o600

        # OpenSSH with the block as printed (plus the user's own key line, as in their config).
        cfg = tmp_path / "ssh_config"
        cfg.write_text(block + f"\nHost *\n  IdentityFile {identity}\n  BatchMode yes\n  ConnectTimeout 10\n")
        done = ssh_with(cfg)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "pi-1 ran: uname -n"

        # The one-line `ssh -J` command, as the user guide says to run it: `-i` and `-o` reach only
        # the board (OpenSSH starts the jump's own ssh without them), so `-i KEY` on that line is
        # refused by the gateway; the key in ssh-agent (`ssh-add KEY` first) works. `-F` is the
        # user's own config (it reaches the jump's ssh): both keys pinned, nothing else.
        mine = tmp_path / "my_config"
        mine.write_text(f"Host *\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
                        "  BatchMode yes\n  ConnectTimeout 10\n")
        line = [*gw["command"].split(), "uname", "-n"]
        line[1:1] = ["-F", str(mine)]
        no_agent = {k: v for k, v in subprocess_env().items() if k != "SSH_AUTH_SOCK"}
        with_i = subprocess.run([line[0], "-i", str(identity), *line[1:]], capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL, env=no_agent)
        assert with_i.returncode != 0 and "Permission denied (publickey)" in with_i.stderr, with_i.stderr
        agent = subprocess.run(
            ["ssh-agent", "sh", "-c", 'ssh-add -q "$1" && shift && exec "$@"', "sh", str(identity), *line],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=no_agent,
        )  # fmt: skip
        assert agent.returncode == 0, agent.stderr
        assert agent.stdout.strip() == "pi-1 ran: uname -n"
        said = (Path(__file__).resolve().parent.parent / "docs" / "user-guide.md").read_text()
        assert "`ssh-add " in said and "add `-i demo-data" not in said

        # A gateway key other than the advertised one: refused, never learnt.
        lines = known.read_text().splitlines()
        known.write_text("\n".join([lines[0].rsplit(" ", 1)[0] + " " + "A" * 68, *lines[1:]]) + "\n")
        done = ssh_with(cfg)
        assert done.returncode != 0 and "pi-1 ran" not in done.stdout

        # pisctl ssh goes through the gateway too (its temporary block, both keys pinned).
        ok = alice.run("ssh", "-i", str(identity), "pi-1", "--", "uname", "-n")
        assert ok.code == 0, ok.err
        assert ok.out.strip() == "pi-1 ran: uname -n"
        assert not (alice.home / ".ssh" / "known_hosts").exists()

        # When the reservation ends, the jump stops.
        assert alice.run("release", "--bin", "gw").code == 0
        ok = alice.run("ssh", "-i", str(identity), "pi-1", "--", "uname", "-n")
        assert ok.code != 0
        done = ssh_with(cfg)
        assert done.returncode != 0 and "pi-1 ran" not in done.stdout
    finally:
        alice.run("release", "--bin", "gw")
        board.close()


# What the browser finds on Manage: a <pre> whose text runs past its box (hidden unless scrolled),
# and whether a point is covered by another element (the sticky "Selected nodes" bar).
_CLIPPED = """() => [...document.querySelectorAll('.jump pre')]
  .filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.className)"""
_COVERED = """(b) => { const r = b.getBoundingClientRect();
  const at = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return at === b || b.contains(at) ? '' : (at ? at.outerHTML.slice(0, 80) : 'nothing'); }"""


@pytest.mark.browser
def test_manage_shows_the_gateway_block_whole_and_downloads_the_keys_by_the_guides_name(
    lab: Lab, tmp_path: Path
) -> None:
    """In Chromium, on Manage with a board deployed behind the gateway: the ~/.ssh/config block and
    the known_hosts lines show whole at 1400 px and 390 px (no text hidden past the box, no page
    wider than the screen), Download saves `piseduce_known_hosts` with those lines, and the sticky
    bar never covers a card's button reached from the keyboard."""
    import os

    from helpers.browser_helpers import ARGS, CHROMIUM

    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    alice = User(tmp_path / "alice")
    alice.login(lab.url, make_token(lab.config, ALICE))
    identity, pub = user_key(tmp_path)
    board = SshNode("pi-2", pub)
    try:
        set_node_attrs(lab.agent, "pi-2", ssh_port=board.port, ssh_user="pi", host_key=board.key_line)
        set_node_ip(lab.agent, "pi-2", "127.0.0.1")
        assert alice.run("reserve", "--nodes", "rpi-lab/pi-2", "--hours", "1", "--bin", "ui").code == 0
        set_account_key(lab.config, ALICE, pub)
        ran = alice.run("deploy", "--bin", "ui", "--env", "tiny", "--wait", timeout=180)
        assert ran.code == 0, ran.err
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 500}, accept_downloads=True)
            page.set_default_timeout(20_000)
            page.goto(f"{lab.url}/login")
            page.fill("#email", ALICE)
            page.fill("#password", "a-user-password")
            page.click("button[type=submit]")
            page.wait_for_url(f"{lab.url}/reserve")
            page.goto(f"{lab.url}/manage")
            card = page.locator(".node-card[data-node='pi-2']")
            card.locator(".jump .ssh-config").wait_for()
            assert page.evaluate(_CLIPPED) == []
            keys = card.locator(".jump-known-hosts").inner_text().strip()

            with page.expect_download() as got:
                card.locator(".jump a", has_text="Download").click()
            saved = got.value
            assert saved.suggested_filename == "piseduce_known_hosts"
            saved.save_as(tmp_path / "downloaded")
            assert (tmp_path / "downloaded").read_text().strip() == keys

            # From the keyboard, the card's last button: shown above the sticky bar, not under it.
            page.evaluate("window.scrollTo(0, 0)")
            button = card.locator(".node-action").last
            button.focus()
            assert page.evaluate(_COVERED, button.element_handle()) == ""
            # Brought into view at the window's bottom edge (as the page scrolls it into view).
            page.evaluate("window.scrollTo(0, 0)")
            button.evaluate("b => b.scrollIntoView({block: 'end'})")
            assert page.evaluate(_COVERED, button.element_handle()) == ""

            page.set_viewport_size({"width": 390, "height": 900})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            assert page.evaluate(_CLIPPED) == []
            browser.close()
    finally:
        alice.run("release", "--bin", "ui")
        board.close()
