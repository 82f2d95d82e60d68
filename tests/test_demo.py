"""`piseduce demo` end to end: the demo starts (simulators, three agents, the web UI), a user deploys
one node of each type in headless Chromium and sees all three reach `deployed`, logs in to the Pi
by SSH, then the demo stops and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import free_port
from browser_helpers import ARGS, CHROMIUM, SHOTS
from iotlab_fixtures import tiny_elf

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NODES = {"raspberry": "pi-1", "g5k": "grisou-1", "iot-lab": "m3-1"}


def free_base() -> int:
    """A base port whose demo ports (base+1..3, +10, +11 TCP, +20 UDP) are all free."""
    import socket

    for _ in range(50):
        base = free_port()
        if base > 64000:
            continue
        try:
            for off in (1, 2, 3, 10, 11):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", base + 20))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range for the demo")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not read its status yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid() and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "demo-data"
    ready = tmp_path / "ready.json"
    webui_port, base = free_port(), free_base()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piseduce.cli",
            "demo",
            "--data",
            str(data),
            "--webui-port",
            str(webui_port),
            "--base-port",
            str(base),
            "--boards",
            "3",
            "--time-scale",
            "20",
            "--ready-file",
            str(ready),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"the demo stopped while starting:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the demo did not start within 240 s")
        time.sleep(0.5)
    info = json.loads(ready.read_text())
    info["proc"] = proc
    try:
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in info["pids"]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


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
        page.fill("#bin", "demo")
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

    # Ctrl-C stops everything; nothing is left running.
    proc: subprocess.Popen[bytes] = demo["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0 or proc.returncode in (0, 130)
    time.sleep(0.5)
    assert [pid for pid in demo["pids"] if alive(pid)] == []
    assert processes_mentioning(demo["data"]) == []
