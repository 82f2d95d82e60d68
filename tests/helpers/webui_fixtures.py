"""Helpers of the web UI tests: a web UI config and client, real agents (fake driver) in child
processes, agents that refuse or never answer, and a contract-speaking fake agent for the bench."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from helpers.agent_helpers import free_port, node_body, piseduce_cmd, subprocess_env, wait_http
from helpers.constants import TOKEN
from helpers.waiting import wait_until_sync

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


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
        # A database call on the event loop fails the test that makes it (webui/database.py).
        "event_loop_db_check": "raise",
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
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui.models import User

    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    with write_session(session_factory(engine)) as s:  # BEGIN IMMEDIATE: no SQLITE_BUSY_SNAPSHOT
        s.add(
            User(
                email=email, password_hash=crypto.hash_password(password), role=role, state=state, ssh_keys=[]
            )
        )
    engine.dispose()


def register_agent(
    config: Path, name: str, port: int, node_type: str, *, site: str = "", token: str = TOKEN
) -> int:
    """An agent row written straight into the web UI's database (what Add Agent stores); the web
    UI's health checker confirms it. Returns its id."""
    from piseduce import crypto
    from piseduce.config import load_webui_config
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui.models import Agent

    cfg = load_webui_config(config)
    engine = make_engine(cfg.database_url)
    try:
        with write_session(session_factory(engine)) as s:  # BEGIN IMMEDIATE: no SQLITE_BUSY_SNAPSHOT
            row = Agent(
                name=name,
                host="127.0.0.1",
                port=port,
                node_type=node_type,
                site=site or name,
                token=crypto.encrypt_str(crypto.load_fernet(cfg.key_path), token),
                status="connected",
            )
            s.add(row)
            s.flush()
            return int(row.id)
    finally:
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
def webui_client(
    config: Path, *, client: tuple[str, int] = ("127.0.0.1", 50000), base_url: str = "http://testserver"
) -> Iterator[Browser]:
    """The web UI in-process; `client` is the address requests come from."""
    from starlette.testclient import TestClient

    from piseduce.config import load_webui_config
    from piseduce.webui.app import create_app

    app = create_app(load_webui_config(config))
    with TestClient(app, base_url=base_url, client=client) as test_client:
        yield Browser(test_client)


@contextlib.contextmanager
def webui_clients(
    config: Path, n: int, *, client: tuple[str, int] = ("127.0.0.1", 50000)
) -> Iterator[list[Browser]]:
    """`n` browsers (their own cookies) on one in-process web UI: one server, several users."""
    from starlette.testclient import TestClient

    from piseduce.config import load_webui_config
    from piseduce.webui.app import create_app

    app = create_app(load_webui_config(config))
    with TestClient(app, base_url="http://testserver", client=client) as first:
        # The others share the app the first one started (its lifespan runs once).
        yield [Browser(first)] + [Browser(TestClient(app, client=client)) for _ in range(n - 1)]


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
            "driver": "helpers.fake_driver:FakeDriver",
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
        # A loaded machine (2 cores, several suites at once) can take half a minute to import.
        wait_http(f"{self.url}/api/health", timeout=90)

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


def agent_headers(email: str, *, admin: bool = False) -> dict[str, str]:
    h = {"Authorization": f"Bearer {TOKEN}", "X-Piseduce-User": email}
    if admin:
        h["X-Piseduce-Role"] = "admin"
    return h


def book_on(
    agent: AgentProcess,
    email: str,
    nodes: list[str],
    *,
    start: str = "now",
    hours: float = 1,
    bin: str = "",
) -> list[int]:
    """Books `nodes` for `email` on the agent (its API, as the web UI would); the reservation ids."""
    body = {"filters": [{"nodes": nodes}], "start": start, "duration_hours": hours, "bin": bin}
    r = httpx.post(f"{agent.url}/api/reservations", json=body, headers=agent_headers(email), timeout=10)
    assert r.status_code == 201, r.text
    return [int(x["id"]) for x in r.json()["reservations"]]


def deployed_on(agent: AgentProcess, email: str, node: str) -> int:
    """Books `node` for `email` and deploys it (fake driver: a second or so)."""
    rid = book_on(agent, email, [node])[0]
    r = httpx.post(f"{agent.url}/api/reservations/{rid}/deploy", json={"environment": "tiny"},
                   headers=agent_headers(email), timeout=10)
    assert r.status_code == 202, r.text
    wait_until_sync(lambda: reservation(agent, email, rid)["status"] == "deployed", timeout=30)
    return rid


def reservation(agent: AgentProcess, email: str, rid: int) -> dict[str, Any]:
    r = httpx.get(f"{agent.url}/api/reservations/{rid}", headers=agent_headers(email), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


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
    """`piseduce webui serve CONFIG` in its own process (`args`: more options, `env`: more variables)."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        from piseduce.config import load_webui_config

        self.cfg = load_webui_config(config)
        self.url = f"http://127.0.0.1:{self.cfg.port_number}"
        log = open(config.parent / "webui.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            piseduce_cmd("webui", "serve", str(config), "--log-level", "warning", *args),
            env=subprocess_env(**(env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.url}/healthz", timeout=90)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- contract fake agent (bench)


class _Counted:
    """Counts the calls of an app by "METHOD /path" (plain ASGI: nearly free, unlike an
    @app.middleware, whose cost the benchmark's fake agents would add to the machine's load)."""

    def __init__(self, app: Any, calls: collections.Counter[str]) -> None:
        self.app = app
        self.calls = calls

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls[f"{scope['method']} {scope['path']}"] += 1
        await self.app(scope, receive, send)


def fake_agent_app(name: str, *, nodes: int = 100, delay: float = 0.1, token: str = TOKEN) -> Any:
    """A minimal agent speaking the §5.1 contract, answering every call after `delay` seconds."""
    from fastapi import FastAPI, Header, HTTPException, Response

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

    # Serialised once: the bench measures the web UI, not how fast this fake encodes its answers.
    nodes_body = json.dumps(node_list).encode()
    reservations_body = json.dumps(reservations).encode()
    busy_body = json.dumps(busy).encode()

    # How many calls of each route it answered (what a page costs the agents: test_agent_client_cost).
    app.state.calls = collections.Counter()
    app.add_middleware(_Counted, calls=app.state.calls)

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
    async def list_nodes(authorization: str | None = Header(default=None)) -> Response:
        check(authorization)
        await asyncio.sleep(delay)
        return Response(nodes_body, media_type="application/json")

    @app.get("/api/schedule")
    async def schedule(
        start: str, end: str, authorization: str | None = Header(default=None)
    ) -> Response:
        check(authorization)
        await asyncio.sleep(delay)
        window = json.dumps({"start": start, "end": end}).encode()
        return Response(window[:-1] + b', "nodes": ' + busy_body + b"}", media_type="application/json")

    @app.get("/api/reservations")
    async def list_reservations(authorization: str | None = Header(default=None)) -> Response:
        check(authorization)
        await asyncio.sleep(delay)
        return Response(reservations_body, media_type="application/json")

    return app


@pytest.fixture(autouse=False)
def fast_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small parameters for in-process tests (the real ones cost ~0.7 s per hash here)."""
    from argon2 import PasswordHasher

    from piseduce import crypto

    monkeypatch.setattr(crypto, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


class _QuietServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns the signals
        pass


@contextlib.contextmanager
def threaded_app(app: Any) -> Iterator[int]:
    """Serve an ASGI app (a fake agent) on a loopback port from a thread; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = _QuietServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until_sync(lambda: server.started, timeout=30, what="the fake agent started")
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
