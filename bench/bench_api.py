"""Users' API benchmark at site scale: 50 agents x 100 nodes and 6 x 500, each agent answering
every call after 100 ms, the web UI with several workers (the same fake agents as bench_webui.py).

Median and p95 of `GET /api/v1/nodes` (with and without a filter) and `GET /api/v1/reservations`
with a personal access token, 1 caller, then 8 callers at once (median of all their calls).
Targets: 300 ms with 1 caller (p95), 600 ms median with 8, as the pages.

    .venv/bin/python bench/bench_api.py --sites 10x100 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
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

from bench_webui import CLOSE, DELAY, SITES, USERS, WORKERS, register, start_agents, wait_up  # noqa: E402
from results import emit  # noqa: E402

ROUNDS = 30
TARGET = 0.300
TARGET_USERS = 0.600
USER = "bench@example.org"
PARTIAL: dict[str, int] = {}
ROUTES = {
    "GET /nodes": ("/nodes", None),
    "GET /nodes?filter=memory>=4G": ("/nodes", {"filter": "memory>=4G"}),
    "GET /reservations": ("/reservations", None),
}


async def timed(c: httpx.AsyncClient, path: str, params: dict[str, str] | None) -> float:
    t0 = time.perf_counter()
    r = await c.get(path, params=params, headers=CLOSE)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:300]
    if "x-piseduce-unavailable" in r.headers:
        PARTIAL[path] = PARTIAL.get(path, 0) + 1
    return took


async def measure(url: str, token: str, agents: int, nodes: int, rounds: int, users: int, size: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    clients = [httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=60, headers=headers) for _ in range(users)]
    try:
        c = clients[0]
        for _ in range(30):  # warm-up (connections), until every agent answered once
            every = (await c.get("/nodes", headers=CLOSE)).json()
            if len(every) == agents * nodes:
                break
            await asyncio.sleep(1)
        assert len(every) == agents * nodes, f"{len(every)} nodes, not {agents * nodes}"
        assert len((await c.get("/reservations")).json()) == agents * 5
        for name, (path, params) in ROUTES.items():
            times = sorted([await timed(c, path, params) for _ in range(rounds)])
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(f"  {name:<30} median {statistics.median(times) * 1000:7.1f} ms (1 caller)")
            emit(f"API: {name} p95, 1 caller", size, p95 * 1000, "ms", TARGET * 1000)

            async def caller(cl: httpx.AsyncClient, path: str = path, params: Any = params) -> list[float]:
                return [await timed(cl, path, params) for _ in range(max(3, rounds // 5))]

            many = [t for ts in await asyncio.gather(*(caller(cl) for cl in clients)) for t in ts]
            emit(f"API: {name} median, {users} callers at once", size, statistics.median(many) * 1000, "ms",
                 TARGET_USERS * 1000)
    finally:
        for cl in clients:
            await cl.aclose()


def run_site(agents: int, nodes: int, args: argparse.Namespace) -> None:
    from helpers.agent_helpers import piseduce_cmd, subprocess_env
    from helpers.api_helpers import make_token
    from helpers.webui_fixtures import add_user, write_webui_config
    from piseduce.config import load_webui_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    ports, procs = start_agents(agents, nodes)
    cfg_path = write_webui_config(tmp, agent_timeout_seconds=1.5, health_check_seconds=30,
                                  event_loop_db_check="warn")
    add_user(cfg_path, USER, "bench-password")
    token = make_token(cfg_path, USER, "read")
    register(cfg_path, ports)
    cfg = load_webui_config(cfg_path)
    log = open(tmp / "webui.log", "ab")  # noqa: SIM115
    webui = subprocess.Popen(
        piseduce_cmd("webui", "serve", str(cfg_path), "--log-level", "warning", "--workers",
                     str(args.workers)),
        env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{cfg.port_number}"
        wait_up(url)
        size = f"{agents} x {nodes} nodes, {args.workers} workers"
        print(f"users' API: {agents} agents x {nodes} nodes, {DELAY * 1000:.0f} ms per agent call, "
              f"{args.workers} workers, token auth", flush=True)
        asyncio.run(measure(url, token, agents, nodes, args.rounds, args.users, size))
        for path, n in PARTIAL.items():
            print(f"  WARNING: {n} answers of {path} lacked an agent (timed out: is the machine loaded?)")
        PARTIAL.clear()
    finally:
        webui.terminate()
        webui.wait(20)
        for p in procs:
            p.terminate()
            p.join(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # its database, config, key and log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default=",".join(f"{a}x{n}" for a, n in SITES))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args()
    for site in args.sites.split(","):
        agents, nodes = (int(x) for x in site.split("x"))
        run_site(agents, nodes, args)


if __name__ == "__main__":
    main()
