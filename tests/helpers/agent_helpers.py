"""Helpers of the agent API tests (plain functions; the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from helpers.constants import ALICE, ROOT, TESTS, TOKEN


def headers(user: str = ALICE, *, admin: bool = False, token: str = TOKEN) -> dict[str, str]:
    h = {"Authorization": f"Bearer {token}", "X-Piseduce-User": user}
    if admin:
        h["X-Piseduce-Role"] = "admin"
    return h


ADMIN = headers("root@example.org", admin=True)


def write_config(folder: Path, db_url: str | None = None, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "auth_token": [TOKEN],
        "port_number": 8090,
        "node_type": "raspberry",
        "db_url": db_url or "sqlite:///agent.db",
        "driver": "helpers.fake_driver:FakeDriver",
        "turnaround_minutes": 10,
    }
    data.update(extra)
    path = folder / "config_agent.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child `piseduce` or Python process: the tests folder importable
    (the fake driver lives there)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def piseduce_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from piseduce.cli import main; main()", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code < 500:
                return r
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout} s ({last})")


def node_body(name: str, model: str = "RPI4B", **props: Any) -> dict[str, Any]:
    return {"name": name, "ip": f"10.0.0.{abs(hash(name)) % 250 + 1}", "model": model, "properties": props}
