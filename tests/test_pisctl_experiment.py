"""The user guide's experiment, both scripts as written (docs/examples/experiment.py and
experiment.sh), against `./run demo`'s components: 4 Pis, 2 Grid'5000 servers and 1 IoT-LAB sensor
booked at once, deployed, waited for, `uname -n` over SSH with pinned keys on each Pi, the
sensor's experiment id read, everything released. The user logs in with `pisctl login` and a
token of their own, as the guide says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.demo_fixtures import running_demo
from helpers.pisctl_helpers import PISCTL, User
from helpers.waiting import wait_until_sync

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def settings_token(url: str, email: str, password: str) -> str:
    """What the guide says: log in, Settings > API tokens, create a write token, copy it."""
    from helpers.webui_fixtures import csrf_of

    with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as web:
        web.post("/login", data={"email": email, "password": password,
                                 "csrf_token": csrf_of(web.get("/login").text)})
        page = web.get("/settings", params={"tab": "tokens"})
        assert page.status_code == 200, page.text[:500]
        made = web.post("/settings/tokens", data={"name": "experiment", "scope": "write", "days": "",
                                                  "csrf_token": csrf_of(page.text)})
        found = re.search(r'id="token-secret">(pst_[A-Za-z0-9_-]+)<', made.text)
        assert found, made.text[:2000]
        return found.group(1)


def left(url: str, token: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/reservations", params={"status": "active"},
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return [x for x in r.json() if x["status"] not in ("destroying", "ended", "cancelled")]


def wiping(url: str, token: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/reservations", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return [x for x in r.json() if x["status"] == "destroying"]


def test_the_documented_experiment_runs_as_a_script_and_as_a_shell_script(tmp_path: Path) -> None:
    with running_demo(tmp_path, boards=4) as demo:
        url = demo["url"].rstrip("/")
        token = settings_token(url, demo["user"]["email"], demo["user"]["password"])
        user = User(tmp_path / "researcher")
        user.login(url, token)
        env = {**user.env, "PATH": f"{Path(PISCTL).parent}:{os.environ['PATH']}"}
        key = demo["user"]["ssh_key"]
        # docs/api.md's filter example finds the Pis with 4 GiB or more (the demo's pi-1: RPI4B4G,
        # pi-3: RPI4B8G; pi-2 is a 3B+ with 1 GiB, pi-4 a 4B with 2 GiB).
        r = httpx.get(f"{url}/api/v1/nodes", params=[("filter", "type=raspberry"), ("filter", "memory>=4G")],
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200 and sorted(n["name"] for n in r.json()) == ["pi-1", "pi-3"], r.text

        py = subprocess.run(
            [sys.executable, str(EXAMPLES / "experiment.py"), "--identity", key, "--ssh", "raspberry",
             "--timeout", "600"],
            env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        assert py.returncode == 0, py.stdout[-3000:] + py.stderr[-3000:]
        for i in range(1, 5):
            assert f"pi-{i} (raspberry) answers: pi-{i}" in py.stdout, py.stdout
        assert "(iot-lab): IoT-LAB experiment " in py.stdout and "experiment None" not in py.stdout
        assert "released 7 node(s)" in py.stdout
        assert "deployed 0%" not in py.stdout, py.stdout  # progress is null once no process runs
        assert left(url, token) == []
        # Released nodes are wiped before anyone may book them again: the second run waits for it,
        # as a researcher rerunning the script would (it says "only N of the 7 nodes are free").
        wait_until_sync(lambda: not wiping(url, token), timeout=300, interval=1, what="the wipes end")

        sh = subprocess.run(
            ["bash", str(EXAMPLES / "experiment.sh")],
            env={**env, "PISEDUCE_SSH_KEY": key, "SSH_TYPES": "raspberry", "BIN": "again"},
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        assert sh.returncode == 0, sh.stdout[-3000:] + sh.stderr[-3000:]
        for i in range(1, 5):
            assert f"answers: pi-{i}" in sh.stdout, sh.stdout
        assert ": IoT-LAB experiment " in sh.stdout and "experiment null" not in sh.stdout
        assert "Traceback" not in sh.stderr
        assert left(url, token) == []
