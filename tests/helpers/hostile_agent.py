"""An agent that answers what a test tells it to: a 22 MB node list, a switch port table of the
wrong types, an 8 KB error, a host that is no agent at all. It speaks the contract (DESIGN §5.1)
well enough for the web UI's pages, served by uvicorn in a thread of the test process; every
request it got is kept (`seen`), headers included, so a test can tell what the web UI sent."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from helpers.constants import TOKEN

OWNER = "victim@example.org"


def nodes(n: int, *, pad: int = 0) -> list[dict[str, Any]]:
    return [
        {"name": f"n-{i}", "properties": {"model": "RPI4B", "note": "x" * pad}, "status": "available"}
        for i in range(n)
    ]


def reservation(rid: int, node: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "id": rid, "node": node, "owner": OWNER, "bin": "b", "start": now.isoformat(),
        "end": (now + dt.timedelta(hours=1)).isoformat(), "status": "deployed", "process": "",
        "step": "", "step_label": "", "step_index": 0, "step_count": 0, "progress": 100, "error": "",
        "events": [], "connection": {}, "params": {}, "actions": ["destroy", "extend"],
    }


@dataclass
class Script:
    """What each route answers: a JSON-able value, or (status, body bytes, content type)."""

    routes: dict[str, Any] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def normal(self) -> None:
        self.routes = {
            "GET /api/health": {"status": "ok"},
            "GET /api/info": {"name": "hostile", "node_type": "raspberry", "site": "h", "version": "1"},
            "GET /api/nodes": nodes(3),
            "GET /api/schedule": {"start": "", "end": "", "nodes": {}},
            "GET /api/reservations": [reservation(1, "n-1")],
            "GET /api/admin/nodes": [],
            "GET /api/admin/switches": [{"name": "sw1", "ip": "10.0.0.2", "port_count": 2}],
            "GET /api/admin/switches/sw1/ports": [{"port": 1, "status": "on", "power_w": 2.5}],
            "GET /api/admin/environments": [],
            "GET /api/monitoring": {"series": []},
        }


def make_app(script: Script) -> FastAPI:
    app = FastAPI(openapi_url=None)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def anything(path: str, request: Request) -> Response:
        key = f"{request.method} /{path}"
        script.seen.append((request.method, f"/{path}", dict(request.headers)))
        if key not in script.routes:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        answer = script.routes[key]
        if key != "GET /api/health" and request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"detail": "wrong token"}, status_code=401)
        if isinstance(answer, tuple):
            status, body, kind = answer
            return Response(body, status_code=status, media_type=kind)
        if isinstance(answer, bytes):
            return Response(answer, media_type="application/json")
        return JSONResponse(answer)

    return app


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns the signals
        pass


class HostileAgent:
    def __init__(self) -> None:
        self.script = Script()
        self.script.normal()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(make_app(self.script), log_level="warning", access_log=False, lifespan="off")
        self.server = _ThreadServer(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the hostile agent did not start")
            time.sleep(0.01)

    def answer(self, route: str, value: Any) -> None:
        self.script.routes[route] = value

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def huge_nodes(megabytes: int) -> bytes:
    """A node list of about `megabytes` MB, serialised once."""
    per_node = 1000
    return json.dumps(nodes(megabytes * 1_000_000 // per_node, pad=per_node - 80)).encode()


def hostile_agent() -> Iterator[HostileAgent]:
    agent = HostileAgent()
    try:
        yield agent
    finally:
        agent.stop()


def banner_server(banner: bytes) -> tuple[socket.socket, list[bytes], threading.Thread]:
    """A TCP service that is no agent: it answers every connection with `banner` and keeps what
    it was sent (to check that no token reached it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    received: list[bytes] = []

    def run() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(65536))
                conn.sendall(banner)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sock, received, thread

