"""`piseduce demo` end to end: the demo starts (simulators, three agents, the web UI), a user deploys
one node of each type in headless Chromium and sees all three reach `deployed`, logs in to the Pi
by SSH, then the demo stops and leaves no process behind."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.browser_helpers import ARGS, CHROMIUM, SHOTS
from helpers.demo_fixtures import alive, processes_mentioning, running_demo
from helpers.iotlab_fixtures import tiny_elf
from piseduce.sim.rpi.mode import real_mode_problem

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NODES = {"raspberry": "pi-1", "g5k": "grisou-1", "iot-lab": "m3-1"}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_demo(tmp_path, boards=3) as info:
        yield info


def test_demo_deploys_one_node_of_each_type_and_stops_cleanly(demo: dict[str, Any]) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    url = demo["url"].rstrip("/")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        ctx = browser.new_context(timezone_id="America/Montreal", viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        page.on("dialog", lambda d: d.accept())
        page.goto(f"{url}/login")
        page.fill("#email", demo["user"]["email"])
        page.fill("#password", demo["user"]["password"])
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/reserve")

        # The agents are added by the demo; the web UI's health check marks them connected.
        deadline = time.monotonic() + 60
        while True:
            page.goto(f"{url}/reserve")
            if all(page.locator(f'.cal-row[data-key$="/{n}"]').count() for n in NODES.values()):
                break
            assert time.monotonic() < deadline, "the three agents' nodes never showed on the reserve page"
            time.sleep(1)
        for node in NODES.values():
            page.click(f'.cal-row[data-key$="/{node}"] .cal-name .node')
        assert page.inner_text("#sel-count") == "3"
        page.fill("#b-bin", "demo")
        page.click("#b-submit")
        page.wait_for_selector(".booking-result .booked >> nth=2")
        page.click("#go-configure")
        page.wait_for_url(f"{url}/configure")

        assert page.locator(".card").count() == 3
        pi = page.locator('.card[data-type="raspberry"]')
        pi.locator('[data-field="part_size"] select').select_option("whole")
        # The sensor gets the user's own firmware, uploaded through the form.
        firmware = Path(demo["data"]) / "my_app.elf"
        firmware.write_bytes(tiny_elf("my_app"))
        iot = page.locator('.card[data-type="iot-lab"]')
        iot.locator('[data-field="firmware_file"] input[type=file]').set_input_files(str(firmware))
        page.fill("#bin-0", "demo")
        page.click("#deploy")
        page.wait_for_url(f"{url}/manage")

        page.evaluate("window.__sameDocument = 'yes'")
        page.wait_for_function(
            "() => { const s = [...document.querySelectorAll('.live[data-status]')]"
            ".map(e => e.dataset.status);"
            " return s.length === 3 && s.every(x => x === 'deployed'); }",
            timeout=180_000,
        )
        assert page.evaluate("window.__sameDocument") == "yes"
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "manage_three_types.png"))
        # Connection values read as text, lists included (no Python repr).
        sensor = page.locator(".node-card[data-node='m3-1'] .conn-info").inner_text()
        assert "nodes: m3-1.strasbourg.iot-lab.info" in sensor and "[" not in sensor, sensor
        command = page.locator(".node-card[data-node='pi-1'] .conn.ssh").inner_text().split()
        # From outside the lab: the demo's SSH gateway, its line, ~/.ssh/config block and keys.
        card = page.locator(".node-card[data-node='pi-1']")
        jump_line = card.locator(".jump-cmd").inner_text().strip()
        block = card.locator(".ssh-config").inner_text()
        jump_keys = card.locator(".jump-known-hosts").inner_text()
        gw_port = demo["gateway"]["port"]
        assert jump_line.startswith(f"ssh -J jump@127.0.0.1:{gw_port} ") and jump_line.endswith(command[-1])
        assert "Host pi-1\n" in block and "StrictHostKeyChecking yes" in block, block
        copy = card.locator(".jump .copy").first
        copy.focus()  # from the keyboard
        page.keyboard.press("Enter")
        page.wait_for_function("b => ['Copied', 'Ctrl+C'].includes(b.textContent)", arg=copy.element_handle())
        card.locator(".jump").screenshot(path=str(SHOTS / "manage_gateway.png"))
        page.set_viewport_size({"width": 390, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.set_viewport_size({"width": 1400, "height": 1000})

        # The demo's monitor samples the Pis' power and temperature: both charts get lines.
        deadline = time.monotonic() + 60
        while True:
            page.goto(f"{url}/monitoring")
            lines = page.evaluate(
                "() => [...document.querySelectorAll('#mon-charts svg')]"
                ".map(svg => svg.querySelectorAll('path.line').length)"
            )
            if len(lines) >= 2 and lines[0] >= 1 and lines[1] >= 1:  # power and temperature
                break
            assert time.monotonic() < deadline, "no power or temperature line on the monitoring page"
            time.sleep(2)
        page.screenshot(path=str(SHOTS / "monitoring.png"))
        browser.close()

    # The uploaded firmware reached the IoT-LAB agent, which flashed it (not the folder's default).
    sec = json.loads((Path(demo["data"]) / "credentials.json").read_text())
    iot_port = next(a["port"] for a in demo["agents"] if a["node_type"] == "iot-lab")
    headers = {"Authorization": f"Bearer {sec['token_iot']}", "X-Piseduce-User": demo["user"]["email"]}
    mine = httpx.get(f"http://127.0.0.1:{iot_port}/api/reservations", headers=headers, timeout=10).json()
    assert [(r["node"], r["params"].get("firmware"), r["params"].get("firmware_source")) for r in mine] == [
        ("m3-1", "my_app.elf", "upload")
    ]

    # The ssh command shown to the user works with the demo user's key.
    assert command[0] == "ssh"
    known = Path(demo["data"]) / "known_hosts_test"
    result = subprocess.run(
        [
            command[0],
            "-i",
            demo["user"]["ssh_key"],
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={known}",
            *command[1:],
            "hostname",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pi-1"
    # The block as Manage shows it, its keys where it says they are: OpenSSH through the gateway.
    pinned = Path(demo["data"]) / "piseduce_known_hosts_test"
    pinned.write_text(jump_keys.strip() + "\n")
    cfg = Path(demo["data"]) / "ssh_config_test"
    cfg.write_text(
        block.replace("~/.ssh/piseduce_known_hosts", str(pinned))
        + f"\nHost *\n  IdentityFile {demo['user']['ssh_key']}\n  BatchMode yes\n  ConnectTimeout 10\n"
    )
    through = subprocess.run(["ssh", "-F", str(cfg), "pi-1", "hostname"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    assert through.returncode == 0, through.stderr
    assert through.stdout.strip() == "pi-1"
    if real_mode_problem() is None:
        # As root the demo's Pis are real hosts: the command names pi-1's own address.
        assert demo["pi_boards"]["mode"] == "real"
        host = command[-1].split("@", 1)[1]
        assert ipaddress.ip_address(host) in ipaddress.ip_network(demo["pi_boards"]["network"])

    # Ctrl-C stops everything; nothing is left running.
    proc: subprocess.Popen[bytes] = demo["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0 or proc.returncode in (0, 130)
    # What it printed once up: every login, the simulated Grid'5000 and IoT-LAB ones too, and where
    # their passwords are (a file only this account reads), never a password.
    printed = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    creds = Path(demo["data"]) / "credentials.json"
    assert f"Grid'5000  demo   (password: jq -r .g5k_password {creds}" in printed, printed[-2000:]
    assert f"IoT-LAB    demo   (password: jq -r .iot_password {creds}" in printed, printed[-2000:]
    gw_line = f"gateway    ssh -J jump@127.0.0.1:{demo['gateway']['port']} pi@<board>"
    assert gw_line in printed, printed[-2000:]
    assert not [k for k, v in sec.items() if "password" in k and v in printed]
    assert (creds.stat().st_mode & 0o777) == 0o600
    assert demo["testbeds"]["g5k"] == {
        "login": "demo", "password": sec["g5k_password"], "url": demo["testbeds"]["g5k"]["url"]
    }
    time.sleep(0.5)
    assert [pid for pid in demo["pids"] if alive(pid)] == []
    assert processes_mentioning(demo["data"]) == []
    network = demo["pi_boards"]["network"]
    if network:  # the board network went with the simulator
        routes = subprocess.run(["ip", "-j", "route"], capture_output=True, text=True, check=True).stdout
        assert all(r.get("dst") != network for r in json.loads(routes or "[]"))


IOTLABCLI_STDERR = re.compile(
    r"^(Using custom api_url: |Password:|Warning: Password input may be echoed\.|passwd = fallback_getpass\("
    r"|\S*getpass\.py:\d+: GetPassWarning: )"
)


def test_the_user_guides_client_commands_run_against_the_demo(demo: dict[str, Any]) -> None:
    """The user guide's 'Your own clients against the demo' blocks, as written, from the folder
    that holds demo-data/: iotlabcli, python-grid5000 and its shell, curl, net-snmp v2c and v3."""
    from helpers.doc_blocks import blocks

    guide = Path(__file__).resolve().parent.parent / "docs" / "user-guide.md"
    parts = [b for b in blocks(guide) if b.action == "demo"]
    assert len(parts) >= 5
    data = Path(demo["data"])
    emulators = json.loads((data / "emulators.json").read_text())
    assert (data / "emulators.json").stat().st_mode & 0o077 == 0
    script = "set -euo pipefail\n" + "".join(b.text for b in parts)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "HOME": str(data.parent / "home")}
    env = {k: v for k, v in env.items() if not k.startswith(("IOTLAB", "SNMP"))}
    done = subprocess.run(["bash", "-c", script], cwd=data.parent, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # As written, the commands say nothing else on stderr: no MIB errors from net-snmp (a file of
    # SNMPCONFPATH replaces Debian's, which has `mibs :`). What iotlabcli always says there (the
    # API it uses; iotlab-auth's prompt when the password comes on stdin) is the only exception.
    noise = [line for line in done.stderr.splitlines()
             if line.strip() and not IOTLABCLI_STDERR.match(line.strip())]
    assert noise == [], done.stderr[:3000]
    out = done.stdout
    assert emulators["grid5000"]["uri"] in out and emulators["iotlab"]["api_url"] in out
    assert "grisou" in out and "gros" in out  # the clusters, by python-grid5000 and curl
    assert "3.6.1.2.1.105.1.1.1.3.1.1 = INTEGER: " in out  # snmpwalk v2c: the ports' power
    assert '3.6.1.2.1.1.5.0 = STRING: "sw1"' in out  # snmpget v3 authPriv: the switch's name
    assert emulators["grid5000"]["password"] not in out

