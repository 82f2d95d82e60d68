"""Hostile request bodies against real servers (issue 11, #2): the agent checks its token before it
reads a body, and both services cap every body while it streams in, chunked ones included, so a
100 MB POST never makes the process grow."""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.agent_helpers import free_port, headers, piseduce_cmd, subprocess_env, wait_http, write_config
from helpers.constants import TOKEN
from helpers.webui_fixtures import WebuiProcess, write_webui_config
from piseduce.body_limit import BodyLimit

MB = 1 << 20


def peak_rss_mb(pid: int) -> float:
    """The process' peak resident size so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


BOUNDARY = "piseduce-boundary"
BODIES = {
    "json": ("application/json", b'{"filters": "', b'"}'),
    "form": ("application/x-www-form-urlencoded", b"email=a&password=", b""),
    "file": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="r0.firmware_file"; filename="f.elf"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode(),
        f"\r\n--{BOUNDARY}--\r\n".encode(),
    ),
}


def chunked_post(
    port: int, path: str, headers: dict[str, str], total: int, *, kind: str = "json", chunk: int = 256 * 1024
) -> int:
    """POST about `total` bytes (a JSON string, a form field or an uploaded file) with
    Transfer-Encoding: chunked (no Content-Length) and return the status the server answered,
    which may come before the body is all sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked",
            f"Content-Type: {BODIES[kind][0]}", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    body = BODIES[kind][1] + b"a" * total + BODIES[kind][2]
    answer = b""
    try:
        for offset in range(0, len(body), chunk):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered already: it will not read the rest
            piece = body[offset : offset + chunk]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        sock.settimeout(60)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 "), f"no HTTP answer: {answer[:200]!r}"
    return int(answer.split()[1])


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    cfg = write_config(tmp_path, port_number=port, host="127.0.0.1")
    init = subprocess.run(piseduce_cmd("agent", "init-db", str(cfg)), env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(piseduce_cmd("agent", "api", str(cfg)), env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=30)
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.mark.slow
def test_agent_never_reads_a_huge_chunked_body(agent_process: tuple[int, int]) -> None:
    pid, port = agent_process
    identity = {"X-Piseduce-User": "alice@example.org"}
    # Warm up the paths taken below, so that their first-use allocations are not counted.
    for h in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        chunked_post(port, "/api/reservations", {**identity, **h}, 2 * MB)
    before = peak_rss_mb(pid)

    # No token: refused before a byte of the body is read.
    t0 = time.monotonic()
    assert chunked_post(port, "/api/reservations", identity, 100 * MB) == 401
    grown = peak_rss_mb(pid) - before
    assert grown < 25, f"the agent grew by {grown:.0f} MiB reading a body without a token"
    # A wrong token, and a path that does not exist: the same.
    assert chunked_post(port, "/api/reservations", {**identity, "Authorization": "Bearer nope-nope-nope"},
                        100 * MB) == 401
    assert chunked_post(port, "/nowhere", identity, 100 * MB) == 401
    # With the token: cut at the route's limit.
    auth = {**identity, "Authorization": f"Bearer {TOKEN}"}
    assert chunked_post(port, "/api/reservations", auth, 100 * MB) == 413
    assert chunked_post(port, "/api/reservations/1/deploy", auth, 100 * MB) == 413
    elapsed = time.monotonic() - t0

    grown = peak_rss_mb(pid) - before
    assert grown < 25, f"the agent grew by {grown:.0f} MiB reading hostile bodies"
    assert elapsed < 30, elapsed
    # It still serves everyone else.
    r = wait_http(f"http://127.0.0.1:{port}/api/health")
    assert r.status_code == 200


@pytest.mark.slow
def test_webui_never_reads_a_huge_chunked_body(tmp_path: Path) -> None:
    web = WebuiProcess(write_webui_config(tmp_path / "webui"))
    try:
        pid, port = web.proc.pid, web.cfg.port_number
        chunked_post(port, "/login", {}, 2 * MB, kind="form")
        chunked_post(port, "/configure/deploy", {}, 2 * MB, kind="file")
        before = peak_rss_mb(pid)
        assert chunked_post(port, "/login", {}, 100 * MB, kind="form") == 413
        assert chunked_post(port, "/signup", {}, 100 * MB, kind="form") == 413
        assert chunked_post(port, "/settings/ssh-keys", {}, 100 * MB, kind="file") == 413
        # The deploy form has the larger limit of its firmware files, and no more.
        assert chunked_post(port, "/configure/deploy", {}, 100 * MB, kind="file") == 413
        grown = peak_rss_mb(pid) - before
        assert grown < 25, f"the web UI grew by {grown:.0f} MiB reading hostile bodies"
        assert wait_http(f"{web.url}/healthz").status_code == 200
    finally:
        web.stop()


# ---------------------------------------------------------------- the middleware itself


class _Counting:
    """An ASGI receive that yields `chunks` chunks of `size` bytes and counts what was taken."""

    def __init__(self, chunks: int, size: int) -> None:
        self.left = chunks
        self.size = size
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if self.left == 0:
            return {"type": "http.disconnect"}
        self.left -= 1
        self.taken += 1
        return {"type": "http.request", "body": b"x" * self.size, "more_body": self.left > 0}


async def _reader(scope: Any, receive: Any, send: Any) -> None:
    """An application that reads its whole body, then answers 200 with its length."""
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RuntimeError("client went away")  # what a framework does on a cut body
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


async def _call(
    app: Any, path: str, receive: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> list[Any]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or []}
    await app(scope, receive, send)
    return sent


def _too_large(limit: int) -> Any:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(f"over {limit}", status_code=413)


async def test_body_limit_stops_reading_at_the_limit_of_the_route() -> None:
    app = BodyLimit(_reader, default=100_000, too_large=_too_large, rules=[(r"/big/[^/]+", 1_000_000)])
    # A chunked body past the default: the 413 goes out and no further chunk is taken.
    receive = _Counting(chunks=1000, size=10_000)
    sent = await _call(app, "/small", receive)
    assert sent[0]["status"] == 413 and b"over 100000" in sent[1]["body"]
    assert receive.taken == 11 and len(sent) == 2  # the application's own answer was dropped
    # The same body on a route with a larger limit.
    receive = _Counting(chunks=1000, size=10_000)
    sent = await _call(app, "/big/1", receive)
    assert sent[0]["status"] == 413 and receive.taken == 101
    # Under the limit: the application reads it all and answers.
    receive = _Counting(chunks=90, size=10_000)
    sent = await _call(app, "/big/1", receive)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"900000"
    # A Content-Length past the limit (or not a number): refused before reading anything.
    for value in (b"100001", b"-1", b"12abc"):
        receive = _Counting(chunks=1, size=10)
        sent = await _call(app, "/small", receive, [(b"content-length", value)])
        assert sent[0]["status"] == 413 and receive.taken == 0, value



async def test_agent_deploy_form_takes_a_4_mib_firmware(client: Any, nodes: list[str]) -> None:
    """The deploy route's limit is that of the firmware a form may carry (4 MiB, base64-encoded):
    the web UI's upload fits; twice as much does not."""
    import base64

    alice = headers("alice@example.org")
    r = await client.post(
        "/api/reservations", json={"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1}, headers=alice
    )
    rid = r.json()["reservations"][0]["id"]
    firmware = base64.b64encode(b"\x7fELF" + b"\0" * (4 * MB - 4)).decode()
    body = {"environment": "env-1", "firmware_file": firmware, "firmware_file_name": "app.elf"}
    r = await client.post(f"/api/reservations/{rid}/deploy", json=body, headers=alice)
    assert r.status_code != 413, r.text
    body["firmware_file"] = firmware * 2
    r = await client.post(f"/api/reservations/{rid}/deploy", json=body, headers=alice)
    assert r.status_code == 413, r.text
    # Every other route keeps the 1 MiB cap.
    r = await client.post("/api/reservations", json={"bin": "x" * (2 * MB)}, headers=alice)
    assert r.status_code == 413
