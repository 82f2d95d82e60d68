"""Helpers of the web UI tests: a web UI config and client, real agents (fake driver) in child
processes, agents that refuse or never answer, and a contract-speaking fake agent for the bench."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from agent_helpers import TOKEN, free_port, node_body, piseduce_cmd, subprocess_env, wait_http  # noqa: E402

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
ADMIN_EMAIL = "boss@example.org"
ADMIN_PASSWORD = "admin-password-1"


# ---------------------------------------------------------------- web UI config


def write_webui_config(folder: Path, **extra: Any) -> Path:
    from piseduce import crypto, db
    from piseduce.config import load_webui_config

    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "port_number": free_port(),
        "db_url": "sqlite:///webui.db",
        "key_file": "secret.key",
        "agent_timeout_seconds": 1.0,
        "health_check_seconds": 1,
    }
    data.update(extra)
    path = folder / "config_webui.json"
    path.write_text(json.dumps(data, indent=2))
    cfg = load_webui_config(path)
    crypto.generate_key_file(cfg.key_path)
    db.upgrade("webui", cfg.database_url)
    return path


def add_user(config: Path, email: str, password: str, *, role: str = "user", state: str = "active") -> None:
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory
    from piseduce.webui.models import User

    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    with session_factory(engine)() as s, s.begin():
        s.add(
            User(
                email=email, password_hash=crypto.hash_password(password), role=role, state=state, ssh_keys=[]
            )
        )
    engine.dispose()


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


class Browser:
    """A Starlette TestClient with a session: log in, post forms with the page's CSRF token."""

    def __init__(self, client: Any) -> None:
        self.c = client

    def get(self, url: str, **kw: Any) -> httpx.Response:
        r: httpx.Response = self.c.get(url, **kw)
        return r

    def post(
        self,
        url: str,
        data: dict[str, Any] | None = None,
        *,
        csrf: bool = True,
        page: str = "/login",
        **kw: Any,
    ) -> httpx.Response:
        data = dict(data or {})
        if csrf:
            data["csrf_token"] = csrf_of(self.c.get(page).text)
        r: httpx.Response = self.c.post(url, data=data, follow_redirects=False, **kw)
        return r

    def login(self, email: str, password: str) -> httpx.Response:
        return self.post("/login", {"email": email, "password": password})


@contextlib.contextmanager
def webui_client(config: Path) -> Iterator[Browser]:
    from starlette.testclient import TestClient

    from piseduce.config import load_webui_config
    from piseduce.webui.app import create_app

    app = create_app(load_webui_config(config))
    with TestClient(app, base_url="http://testserver") as client:
        yield Browser(client)


# ---------------------------------------------------------------- real agents (fake driver)


class AgentProcess:
    """`piseduce agent api` (and `exec`) of a fake-driver agent in child processes."""

    def __init__(self, folder: Path, *, nodes: int = 4, executor: bool = True, **extra: Any) -> None:
        from piseduce import db
        from piseduce.config import load_agent_config

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        data: dict[str, Any] = {
            "auth_token": [TOKEN],
            "port_number": self.port,
            "node_type": "raspberry",
            "host": "127.0.0.1",
            "db_url": "sqlite:///agent.db",
            "driver": "fake_driver:FakeDriver",
            "turnaround_minutes": 0,
            "timeout_scale": 0.2,
            "poll_interval": 0.1,
            "name": folder.name,
        }
        data.update(extra)
        self.config = folder / "config_agent.json"
        self.config.write_text(json.dumps(data, indent=2))
        cfg = load_agent_config(self.config, check_files=False)
        db.upgrade("agent", cfg.database_url)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.n_nodes = nodes
        self.executor = executor
        self.start()
        for i in range(1, nodes + 1):
            body = node_body(f"pi-{i}", "RPI4B" if i % 2 else "RPI3B+", memory_gb=4 if i % 2 else 1)
            r = httpx.post(
                f"{self.url}/api/admin/nodes",
                json=body,
                timeout=10,
                headers={
                    "Authorization": f"Bearer {TOKEN}",
                    "X-Piseduce-User": "root@example.org",
                    "X-Piseduce-Role": "admin",
                },
            )
            assert r.status_code in (201, 409), r.text

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = subprocess_env()
        log = open(self.folder / "api.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(
                piseduce_cmd("agent", "api", str(self.config)), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        if self.executor:
            elog = open(self.folder / "exec.log", "ab")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(
                    piseduce_cmd("agent", "exec", str(self.config)),
                    env=env,
                    stdout=elog,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_http(f"{self.url}/api/health", timeout=30)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def add_agent_form(name: str, port: int, token: str = TOKEN, host: str = "127.0.0.1") -> dict[str, str]:
    return {"name": name, "host": host, "port": str(port), "token": token}


class SilentPort:
    """A port that accepts connections and never answers: a hung agent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- webui server process


class WebuiProcess:
    def __init__(self, config: Path) -> None:
        from piseduce.config import load_webui_config

        self.cfg = load_webui_config(config)
        self.url = f"http://127.0.0.1:{self.cfg.port_number}"
        log = open(config.parent / "webui.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            piseduce_cmd("webui", "serve", str(config), "--log-level", "warning"),
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.url}/healthz", timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- contract fake agent (bench)


def fake_agent_app(name: str, *, nodes: int = 100, delay: float = 0.1, token: str = TOKEN) -> Any:
    """A minimal agent speaking the §5.1 contract, answering every call after `delay` seconds."""
    from fastapi import FastAPI, Header, HTTPException

    app = FastAPI()
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    node_list = [
        {
            "name": f"n-{i}",
            "properties": {"model": "RPI4B" if i % 2 else "RPI3B+", "memory_gb": 4 if i % 2 else 1},
            "status": "available",
        }
        for i in range(nodes)
    ]
    busy = {
        f"n-{i}": [
            {
                "start": (now + dt.timedelta(hours=i % 24)).isoformat(),
                "end": (now + dt.timedelta(hours=i % 24 + 3)).isoformat(),
                "mine": i % 10 == 0,
            }
        ]
        for i in range(0, nodes, 3)
    }
    reservations = [
        {
            "id": i + 1,
            "node": f"n-{i}",
            "owner": "bench@example.org",
            "bin": "bench",
            "start": now.isoformat(),
            "end": (now + dt.timedelta(hours=2)).isoformat(),
            "status": "deploying",
            "step": "install",
            "step_label": "Writing the image",
            "step_index": 3,
            "step_count": 5,
            "progress": 40,
            "actions": ["destroy", "extend"],
            "connection": {"ssh": f"ssh root@n-{i}"},
            "params": {},
        }
        for i in range(5)
    ]

    def check(authorization: str | None) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "wrong token")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        await asyncio.sleep(delay)
        return {"status": "ok"}

    @app.get("/api/info")
    async def info(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        check(authorization)
        await asyncio.sleep(delay)
        return {"name": name, "node_type": "raspberry", "site": name, "version": "bench"}

    @app.get("/api/nodes")
    async def list_nodes(authorization: str | None = Header(default=None)) -> list[dict[str, Any]]:
        check(authorization)
        await asyncio.sleep(delay)
        return node_list

    @app.get("/api/schedule")
    async def schedule(
        start: str, end: str, authorization: str | None = Header(default=None)
    ) -> dict[str, Any]:
        check(authorization)
        await asyncio.sleep(delay)
        return {"start": start, "end": end, "nodes": busy}

    @app.get("/api/reservations")
    async def list_reservations(authorization: str | None = Header(default=None)) -> list[dict[str, Any]]:
        check(authorization)
        await asyncio.sleep(delay)
        return reservations

    return app


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not reached")


@pytest.fixture(autouse=False)
def fast_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small parameters for in-process tests (the real ones cost ~0.7 s per hash here)."""
    from argon2 import PasswordHasher

    from piseduce import crypto

    monkeypatch.setattr(crypto, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
