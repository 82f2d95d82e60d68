"""The web UI's infrastructure pages under test: a raspberry agent process on a simulated switch
(`rpi`), a read-only g5k-type agent (`g5k`), a web UI config (`config`), and what the tests read
from the pages (flash messages, an agent's part of a page, the Add Node form)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import free_port, piseduce_cmd, subprocess_env, wait_http
from helpers.constants import ADMIN_EMAIL, ADMIN_PASSWORD, TOKEN
from helpers.waiting import wait_until_sync
from helpers.webui_fixtures import AgentProcess, Browser, add_agent_form, add_user, write_webui_config

ADMIN_HEADERS = {
    "Authorization": f"Bearer {TOKEN}",
    "X-Piseduce-User": "root@example.org",
    "X-Piseduce-Role": "admin",
}


FLASH_RE = re.compile(r'<div class="flash (\w+)" role="(?:status|alert)">([^<]*)</div>')


class RaspberryAgent:
    """`piseduce sim rpi` (2 boards) and a raspberry agent's API (no executor) knowing its switch."""

    def __init__(self, folder: Path, *, board_network: bool = False) -> None:
        """board_network: the agent's `board_address` is the simulator's uplink (node detection
        finds the boards there; real mode only)."""
        import asyncssh

        from piseduce import db
        from piseduce.config import load_agent_config

        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        key = asyncssh.generate_private_key("ssh-ed25519", comment="piseduce-agent")
        agent_key = folder / "agent_key"
        agent_key.write_bytes(key.export_private_key())
        agent_key.chmod(0o600)
        (folder / "agent_key.pub").write_text(key.export_public_key().decode())
        env_dir = folder / "environments"
        env_dir.mkdir()
        # Two small images with sidecars (what the image builder writes), found by "Scan env_path".
        for name in ("tiny-a", "tiny-b"):
            (env_dir / f"{name}.img").write_bytes(name.encode() * 1000)
            sidecar = {"name": name, "image": f"{name}.img", "size": 6000, "ssh_user": "pi"}
            (env_dir / f"{name}.img.json").write_text(json.dumps(sidecar))
        (env_dir / "spare.img").write_bytes(b"\0" * 4096)
        (env_dir / "broken.img.json").write_text('{"name": "broken", "image": "missing.img"}')
        inventory_file = folder / "inventory.json"
        self._spawn(
            "sim.log", "sim", "rpi", "--boards", "2", "--state-dir", str(folder / "sim"),
            "--tftp-root", str(folder / "tftpboot"), "--nfs-root", str(folder / "nfs"),
            "--time-scale", "100", "--seed", "3", "--inventory-file", str(inventory_file),
            "--agent-pubkey", str(folder / "agent_key.pub"),
        )  # fmt: skip
        wait_until_sync(lambda: inventory_file.exists() and inventory_file.stat().st_size > 0, timeout=30)
        time.sleep(0.2)
        self.inventory = json.loads(inventory_file.read_text())
        self.port = free_port()
        config = folder / "config_agent.json"
        extra: dict[str, Any] = {}
        if board_network:
            prefix = self.inventory["network"].split("/")[1]
            extra["board_address"] = f"{self.inventory['uplink']['ip']}/{prefix}"
        config.write_text(
            json.dumps(
                {
                    **extra,
                    "auth_token": [TOKEN],
                    "port_number": self.port,
                    "host": "127.0.0.1",
                    "node_type": "raspberry",
                    "name": "rpi-lab",
                    "db_url": "sqlite:///agent.db",
                    "tftp_root": "tftpboot",
                    "nfs_root": "nfs",
                    "env_path": "environments/",
                    "ssh_key_file": str(agent_key),
                    "turnaround_minutes": 0,
                }
            )
        )
        db.upgrade("agent", load_agent_config(config).database_url)
        self._spawn("api.log", "agent", "api", str(config))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.url}/api/health", timeout=30)
        r = httpx.post(f"{self.url}/api/admin/switches", json=self.inventory["switch"], headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text

    @property
    def switch(self) -> dict[str, Any]:
        sw: dict[str, Any] = self.inventory["switch"]
        return sw

    def board(self, i: int) -> dict[str, Any]:
        b: dict[str, Any] = self.inventory["boards"][i]
        return b

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=ADMIN_HEADERS, timeout=10, **kw)

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


@pytest.fixture(scope="module")
def rpi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaspberryAgent]:
    a = RaspberryAgent(tmp_path_factory.mktemp("rpi"))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def g5k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """A fake-driver agent announcing node_type g5k (the web UI shows it read-only)."""
    from piseduce import crypto

    folder = tmp_path_factory.mktemp("g5k") / "g5k-nancy"
    folder.mkdir()
    crypto.generate_key_file(folder / "agent.key")
    a = AgentProcess(folder, nodes=2, executor=False, node_type="g5k", key_file="agent.key")
    yield a
    a.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin")
    add_user(cfg, "alice@example.org", "alice-password")
    return cfg


def flashes(html: str) -> list[tuple[str, str]]:
    import html as h

    return [(k, h.unescape(m)) for k, m in FLASH_RE.findall(html)]


def follow(b: Browser, r: httpx.Response) -> str:
    """The page after a POST: its own body (400) or the page it redirects to (303)."""
    if r.status_code == 303:
        return b.get(r.headers["location"]).text
    return r.text


def connect(b: Browser, *agents: tuple[str, int]) -> None:
    b.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    for name, port in agents:
        r = b.post("/admin/agents", add_agent_form(name, port), page="/admin/agents")
        assert r.status_code == 303, r.text


def node_form(**kw: str) -> dict[str, str]:
    return {"name": "", "ip": "", "switch": "", "port": "", "ssh_port": "22", "model": "", "serial": "",
            "mac": "", "properties": "", **kw}  # fmt: skip
