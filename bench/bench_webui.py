"""Web UI at site scale: the Reserve and Manage pages with many agents and nodes, several workers.

Sites (agents x nodes, every agent answering every call after 100 ms): 50 x 100 and 6 x 500. For
each, the web UI (`piseduce webui serve --workers N`, its own processes) serves Reserve and Manage
to 1 user (median of ROUNDS requests, each on a new connection so the workers share them), then
to 8 users at once (median of every request of the 8). Targets: 300 ms with 1 user, 600 ms with
8. The Reserve page's size is printed beside them (one page of the calendar, whatever the site).
Then, at the first site, one more agent that accepts connections and never answers: the pages
still come within 1.2 s (one agent deadline, then the circuit breaker skips it).

Beside each median: the web UI's CPU per page (its processes' utime + stime, proc_meter.py: 8 users
on 2 workers get 600 ms only if a page costs well under 100 ms of it), the fake agents' CPU (they
share the machine), the agents' calls per page by route, and the load. A page that lacked an
agent (it timed out) is counted and warned of: its agent's circuit breaker then skips it for up to
30 s, and the figures after it ask fewer agents than the site has.

    .venv/bin/python bench/bench_webui.py                      # both sites, 2 workers
    .venv/bin/python bench/bench_webui.py --sites 10x100 --rounds 5 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from proc_meter import Meter, load  # noqa: E402
from results import emit  # noqa: E402

SITES = ((50, 100), (6, 500))
DELAY = 0.1
ROUNDS = 15
USERS = 8
WORKERS = 2
TARGET = 0.300
TARGET_USERS = 0.600
TARGET_DEAD = 1.2
CLOSE = {"Connection": "close"}  # a new connection per request: the kernel spreads them over workers


ROUTES = ("/api/nodes", "/api/schedule", "/api/reservations", "/api/info", "/api/health")


def counted(app: Any, counts: Any) -> Any:
    """The app, counting its calls by route in `counts` (shared memory: the bench reads it)."""
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            counts[ROUTES.index(path) if path in ROUTES else len(ROUTES)] += 1
        await app(scope, receive, send)

    return asgi


def serve_agents(names: list[str], nodes: int, ports: Any, counts: Any) -> None:
    """Fake agents in one process, each on a socket it binds itself (port 0: no race for a port
    another process took meanwhile); their ports go back through `ports`."""
    import uvicorn

    from helpers.webui_fixtures import fake_agent_app

    async def main() -> None:
        socks, servers = [], []
        for name in names:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            app = counted(fake_agent_app(name, nodes=nodes, delay=DELAY), counts)
            servers.append(uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off")))
        tasks = [asyncio.create_task(s.serve(sockets=[k])) for s, k in zip(servers, socks, strict=True)]
        while not all(s.started for s in servers):
            await asyncio.sleep(0.05)
        ports.put([int(k.getsockname()[1]) for k in socks])
        await asyncio.gather(*tasks)

    asyncio.run(main())


def start_agents(agents: int, nodes: int, processes: int = 2) -> tuple[list[int], list[mp.Process], Any]:
    """`agents` fake agents spread over `processes` processes (one would be the bottleneck): their
    ports (site0, site1, ... in order), the processes, and a function reading their call counts."""
    names = [f"site{i}" for i in range(agents)]
    by_name: dict[str, int] = {}
    procs, arrays = [], []
    for k in range(processes):
        mine = names[k::processes]
        if not mine:
            continue
        queue: Any = mp.Queue()
        counts = mp.Array("l", len(ROUTES) + 1, lock=False)
        p = mp.Process(target=serve_agents, args=(mine, nodes, queue, counts), daemon=True)
        p.start()
        try:
            by_name.update(zip(mine, queue.get(timeout=120), strict=True))
        except Exception as exc:
            raise SystemExit("the fake agents did not start") from exc
        procs.append(p)
        arrays.append(counts)

    def calls() -> dict[str, int]:
        return {route: sum(a[i] for a in arrays) for i, route in enumerate((*ROUTES, "other"))}

    return [by_name[n] for n in names], procs, calls


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def register(cfg_path: Path, ports: list[int], names: list[str] | None = None) -> None:
    from helpers.webui_fixtures import register_agent

    for i, p in enumerate(ports):
        register_agent(cfg_path, (names or [])[i] if names else f"site{i}", p, "raspberry")


async def login(url: str, email: str, password: str) -> httpx.AsyncClient:
    from helpers.webui_fixtures import csrf_of

    c = httpx.AsyncClient(base_url=url, timeout=60, follow_redirects=False)
    token = csrf_of((await c.get("/login", headers=CLOSE)).text)
    form = {"email": email, "password": password, "csrf_token": token}
    r = await c.post("/login", data=form, headers=CLOSE)
    assert r.status_code == 303, r.text[:300]
    return c


PARTIAL: dict[str, int] = {}


async def timed(c: httpx.AsyncClient, path: str) -> tuple[float, int]:
    """Seconds and bytes of one page; a page missing an agent (it timed out) is counted in PARTIAL."""
    t0 = time.perf_counter()
    r = await c.get(path, headers=CLOSE)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:300]
    if 'class="flash error"' in r.text:
        PARTIAL[path] = PARTIAL.get(path, 0) + 1
        if PARTIAL[path] == 1:
            print("  first partial answer:", re.findall(r'role="alert">([^<]*)<', r.text)[:2], flush=True)
    return took, len(r.content)


async def one_user(c: httpx.AsyncClient, path: str, rounds: int) -> float:
    return statistics.median([(await timed(c, path))[0] for _ in range(rounds)])


async def many_users(clients: list[httpx.AsyncClient], path: str, rounds: int) -> float:
    async def user(c: httpx.AsyncClient) -> list[float]:
        return [(await timed(c, path))[0] for _ in range(rounds)]

    every = await asyncio.gather(*(user(c) for c in clients))
    return statistics.median([t for times in every for t in times])


def cost(meter: Meter, before: Any, name: str, who: str, size: str, pages: int) -> None:
    """What the pages since `before` cost: the web UI's CPU per page (its target: 8 users on 2
    workers get 600 ms only if a page costs well under 100 ms of CPU), the agents' CPU and calls."""
    webui, agents, calls = Meter.per_page(before, meter.read(), pages)
    emit(f"web UI: {name} CPU per page, {who}", size, webui, "ms", None)
    asked = ", ".join(f"{k.removeprefix('/api/')} {v:g}" for k, v in sorted(calls.items()))
    print(f"    fake agents: {agents:.0f} ms CPU per page; calls per page: {asked}; load {load()}",
          flush=True)


async def measure_site(url: str, agents: int, nodes: int, rounds: int, users: int, workers: int,
                       meter: Meter) -> None:
    size = f"{agents} x {nodes} nodes, {workers} workers"
    clients = [await login(url, f"user{i}@example.org", "bench-password") for i in range(users)]
    try:
        first = clients[0]
        for _ in range(30):  # warm-up (connections, templates), until every agent answered once
            page = (await first.get("/reserve", headers=CLOSE)).text
            if f'data-total="{agents * nodes}"' in page:
                break
            await asyncio.sleep(1)
        else:
            errors = re.findall(r'role="alert">([^<]*)<', page)[:3]
            raise SystemExit(f"not every node is shown: {errors}")
        for c in clients:  # every worker's pools and templates warm
            await asyncio.gather(*(c.get(p, headers=CLOSE) for p in ("/reserve", "/manage", "/reserve")))
        _took, page_bytes = await timed(first, "/reserve")
        for name in ("reserve", "manage"):
            path = f"/{name}"
            before = meter.read()
            emit(f"web UI: {name} median, 1 user", size, await one_user(first, path, rounds) * 1000, "ms",
                 TARGET * 1000)
            cost(meter, before, name, "1 user", size, rounds)
            before = meter.read()
            many = max(3, rounds // 3)
            emit(f"web UI: {name} median, {users} users at once", size,
                 await many_users(clients, path, many) * 1000, "ms", TARGET_USERS * 1000)
            cost(meter, before, name, f"{users} users", size, many * users)
        emit("web UI: reserve page size", size, page_bytes / 1024, "KiB", None)
        for path, n in PARTIAL.items():
            print(f"  WARNING: {n} answers of {path} lacked an agent (timed out: is the machine loaded?)")
        PARTIAL.clear()
    finally:
        for c in clients:
            await c.aclose()


async def measure_dead(url: str, cfg_path: Path, silent_port: int, rounds: int, workers: int,
                       agents: int, nodes: int) -> None:
    register(cfg_path, [silent_port], ["dead"])
    size = f"{agents} x {nodes} nodes + 1 dead, {workers} workers"
    c = await login(url, "user0@example.org", "bench-password")
    try:
        t0 = time.perf_counter()
        first = await c.get("/reserve", headers=CLOSE)
        first_dead = time.perf_counter() - t0
        assert "Agent dead: unreachable" in first.text
        for name in ("reserve", "manage"):
            emit(f"web UI: {name} (dead agent) median", size, await one_user(c, f"/{name}", rounds) * 1000,
                 "ms", TARGET_DEAD * 1000)
        print(f"  first request after the agent died: {first_dead * 1000:.0f} ms (one agent timeout, then "
              "each worker's circuit breaker skips it)")
    finally:
        await c.aclose()


def run_site(agents: int, nodes: int, args: argparse.Namespace, dead: bool) -> None:
    from helpers.agent_helpers import piseduce_cmd, subprocess_env
    from helpers.webui_fixtures import SilentPort, add_user, write_webui_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-webui-"))
    ports, procs, calls = start_agents(agents, nodes)
    cfg_path = write_webui_config(tmp, agent_timeout_seconds=1.5, health_check_seconds=30,
                                  event_loop_db_check="warn")
    for i in range(args.users):
        add_user(cfg_path, f"user{i}@example.org", "bench-password")
    register(cfg_path, ports)
    from piseduce.config import load_webui_config

    cfg = load_webui_config(cfg_path)
    log = open(tmp / "webui.log", "ab")  # noqa: SIM115
    webui = subprocess.Popen(
        piseduce_cmd("webui", "serve", str(cfg_path), "--log-level", "warning", "--workers",
                     str(args.workers)),
        env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    silent = SilentPort()
    try:
        url = f"http://127.0.0.1:{cfg.port_number}"
        wait_up(url)
        print(f"web UI: {agents} agents x {nodes} nodes, {DELAY * 1000:.0f} ms per agent call, "
              f"{args.workers} workers; load {load()}", flush=True)
        meter = Meter(webui.pid, [p.pid for p in procs if p.pid is not None], calls)
        asyncio.run(measure_site(url, agents, nodes, args.rounds, args.users, args.workers, meter))
        if dead:
            asyncio.run(measure_dead(url, cfg_path, silent.port, args.rounds, args.workers, agents, nodes))
    finally:
        silent.close()
        webui.terminate()
        try:
            webui.wait(30)
        except subprocess.TimeoutExpired:  # a worker stuck in its shutdown: the run's figures stand
            print("  the web UI did not stop within 30 s of SIGTERM: killed", flush=True)
            webui.kill()
            webui.wait(10)
        for p in procs:
            p.terminate()
            p.join(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # its database, config, key and log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default=",".join(f"{a}x{n}" for a, n in SITES),
                        help="agents x nodes, comma-separated (default: 50x100,6x500)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args()
    sites = [tuple(int(x) for x in s.split("x")) for s in args.sites.split(",") if s]
    for k, (agents, nodes) in enumerate(sites):
        run_site(agents, nodes, args, dead=k == 0)


if __name__ == "__main__":
    main()
