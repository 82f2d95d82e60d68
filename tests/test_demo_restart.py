"""`piseduce demo` started again on the data folder of an earlier run (without --fresh): it comes up,
brings the boards' registration in line with the simulator (an agent's newer checks refused its old
re-registration: HTTPStatusError 422 on PATCH /api/admin/nodes/pi-1), and keeps the folder private:
the folders holding databases and keys are 0700, the logs 0600, tightened when an older version
left them readable by every account."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import free_port
from helpers.demo_fixtures import alive, free_base

pytestmark = pytest.mark.slow

PRIVATE_DIRS = ("", "webui", "rpi-lab", "g5k-nancy", "iotlab-strasbourg", "logs", "environments",
                "rpi/state")


def start(
    data: Path, ready: Path, webui_port: int, base: int
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "piseduce.cli", "demo", "--data", str(data), "--webui-port", str(webui_port),
         "--base-port", str(base), "--boards", "2", "--time-scale", "20", "--ready-file", str(ready)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"the demo stopped while starting:\n{out[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the demo did not start within 240 s")
        time.sleep(0.5)
    return proc, json.loads(ready.read_text())


def stop(proc: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in info.get("pids", []):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_private(data: Path) -> None:
    for sub in PRIVATE_DIRS:
        assert mode(data / sub) == 0o700, (sub, oct(mode(data / sub)))
    logs = sorted((data / "logs").glob("*.log"))
    assert logs, "no log file"
    assert {p.name: mode(p) for p in logs} == {p.name: 0o600 for p in logs}
    for db in data.glob("*/*.db"):
        assert mode(db) == 0o600, db
    for secret in ("credentials.json", "secret.key", "agent_ssh_key", "demo_user_key"):
        assert mode(data / secret) == 0o600, secret


def registered(info: dict[str, Any], data: Path) -> dict[str, dict[str, Any]]:
    token = json.loads((data / "credentials.json").read_text())["token_pi"]
    port = next(a["port"] for a in info["agents"] if a["node_type"] == "raspberry")
    headers = {"Authorization": f"Bearer {token}", "X-Piseduce-User": "t@example.org",
               "X-Piseduce-Role": "admin"}
    r = httpx.get(f"http://127.0.0.1:{port}/api/admin/nodes", headers=headers, timeout=10)
    r.raise_for_status()
    return {n["name"]: n for n in r.json()}


def test_the_demo_starts_again_on_its_folder_and_keeps_it_private(tmp_path: Path) -> None:
    data, ready = tmp_path / "demo-data", tmp_path / "ready.json"
    webui_port, base = free_port(), free_base()
    proc, info = start(data, ready, webui_port, base)
    try:
        check_private(data)
        first = registered(info, data)
        assert sorted(first) == ["pi-1", "pi-2"]
    finally:
        stop(proc, info)

    # What an earlier version left: folders and logs readable by everyone; and a board whose
    # registration no longer matches the simulator (its SSH port moved, its status was changed).
    for sub in PRIVATE_DIRS:
        os.chmod(data / sub, 0o755)
    for log in (data / "logs").glob("*.log"):
        os.chmod(log, 0o644)
    with sqlite3.connect(data / "rpi-lab" / "agent.db") as db:
        (attrs,) = db.execute("SELECT attrs FROM nodes WHERE name = 'pi-1'").fetchone()
        stale = {**json.loads(attrs), "ssh_port": 1}
        db.execute("UPDATE nodes SET attrs = ?, status = 'maintenance' WHERE name = 'pi-1'",
                   (json.dumps(stale),))

    proc, info = start(data, ready, webui_port, base)
    try:
        check_private(data)
        again = registered(info, data)
        inventory = json.loads((data / "rpi" / "inventory.json").read_text())
        for board in inventory["boards"]:
            node = again[board["name"]]
            assert node["attrs"]["ssh_port"] == board["ssh_port"], node
            assert node["ip"] == board["ip"] and node["attrs"]["port"] == board["port"]
        # The administrator's status is theirs: re-registering describes the board, nothing more.
        assert again["pi-1"]["status"] == "maintenance" and again["pi-2"]["status"] == "available"
        r = httpx.get(info["url"] + "login", timeout=10)
        assert r.status_code == 200
    finally:
        stop(proc, info)
