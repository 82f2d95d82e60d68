"""The executor's concurrency: N fake nodes deploying at once versus one node alone.

Each node runs the fake driver's deploy (three steps whose run() sleeps `--delay` seconds, then a
connect step), so a node alone takes about 3 x delay plus the engine's own work (one commit with
its event per transition). If nodes advanced in lock-step or one by one, N nodes would take N times
as long; the executor runs them concurrently, so the N-node time should stay close to the 1-node
time (target: <= 1.2 x at every size). Printed per size: both times, their ratio, the commit rate
the engine sustained (events written per second), the CPU time it took per event (a figure that
other jobs sharing the cores do not inflate) and every reservation that did not deploy, with its
reason, on SQLite (and on PostgreSQL when PISEDUCE_PG_URL is set).

The fake driver's timeouts are scaled with the delay (`timeout_scale`), so a long `--delay` never
trips its automatic reboot: every size measures the same path (the automatic reboots seen are
printed). Every wait is bounded (`--timeout`): a run that does not finish reports what is missing.
The progress is watched from a thread, with one small query, never on the executor's event loop.

On PostgreSQL it then compares one executor process with two sharing the database (leases) at
the largest size, each executor a `piseduce agent exec` process of its own (the same entry point,
with the fake driver): target "two faster than one" (time of two / time of one < 1). Executors are
stopped with SIGTERM (then killed) whatever happens; their output is shown when a run fails.

The figures are noisy on a shared machine: other jobs on the same cores stretch the wall times
(the CPU per event is the steadier figure). Last measured (issue 15, 2 shared cores at load 5-6,
1,000 nodes, before -> after the engine branch of December 2026, same run conditions):

    SQLite,     0.5 s steps: 1.68x, 0.12 ms per event -> 1.57x, 0.10 ms
    SQLite,     2 s steps:   1.32x, 0.22 ms           -> 1.18x, 0.14 ms
    PostgreSQL, 0.5 s steps: 2.50x, 0.16 ms           -> 1.48x, 0.09 ms
    PostgreSQL, 2 s steps:   1.49x, 0.23 ms           -> 1.19x, 0.15 ms
    two executors / one (PostgreSQL): 0.5 s 1.24 -> 0.93, 2 s 1.09 -> 0.98

At 2 s steps about a third of the CPU was the idle scheduling passes (every 0.05 s here; the default
poll_interval is 2 s) and this process's progress watcher. Since the engine2 branch (migration 0010's
indexes, the pass's lookups built once) an idle pass with 1,000 deployed reservations costs 0.7-0.9 ms
of CPU on SQLite (4.4 ms before), 1.2-2.1 ms on PostgreSQL (2.4-3.6 ms); at 2 s steps, load 5-6:
SQLite 1.17x, 0.17 ms per event -> 1.13x, 0.13 ms; PostgreSQL 1.31x, 0.18 ms -> 1.28x, 0.16 ms.
The 0.5 s steps (the deployments' own events) did not move beyond the noise.

    python bench/bench_engine.py [--nodes 100,500,1000] [--delay 0.5,2] [--timeout 300] [--executors-at N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from results import emit  # noqa: E402

from helpers.fake_driver import FakeDriver  # noqa: E402
from piseduce.agent.engine.executor import Executor, tune_gc  # noqa: E402
from piseduce.agent.models import Event, Node, Reservation, utcnow  # noqa: E402
from piseduce.config import load_agent_config  # noqa: E402
from piseduce.db import make_engine, session_factory, upgrade  # noqa: E402

TARGET_RATIO = 1.2
TERMINAL = ("deployed", "failed")


def book(sessions: sessionmaker[Session], prefix: str, count: int, delay: float) -> list[int]:
    start = utcnow() - dt.timedelta(seconds=1)
    end = start + dt.timedelta(hours=1)
    with sessions() as s:
        rows = []
        for i in range(count):
            s.add(Node(name=f"{prefix}{i}", attrs={"step_delay": delay}))
            r = Reservation(
                node_name=f"{prefix}{i}",
                owner="bench@example.org",
                start=start,
                end=end,
                busy_until=end,
                status="scheduled",
            )
            s.add(r)
            rows.append(r)
        s.commit()
        return [r.id for r in rows]


def statuses(sessions: sessionmaker[Session], ids: list[int]) -> dict[str, int]:
    """How many of the reservations `ids` (consecutive) are in each status: one small query."""
    with sessions() as s:
        rows = s.execute(
            select(Reservation.status, func.count())
            .where(Reservation.id.between(min(ids), max(ids)))
            .group_by(Reservation.status)
        ).all()
    return {status: n for status, n in rows}


def failures(sessions: sessionmaker[Session], ids: list[int]) -> dict[str, int]:
    """The reasons of the reservations of `ids` that did not deploy, with their counts."""
    with sessions() as s:
        rows = s.execute(
            select(Reservation.status, Reservation.error).where(
                Reservation.id.between(min(ids), max(ids)), Reservation.status != "deployed"
            )
        ).all()
    return dict(
        Counter(
            f"failed: {err or 'no reason recorded'}" if st == "failed" else f"still {st} when the wait ended"
            for st, err in rows
        )
    )


async def deploy(sessions: sessionmaker[Session], prefix: str, count: int, delay: float, limit: float) -> Run:
    ids = await asyncio.to_thread(book, sessions, prefix, count, delay)
    t0, cpu0, booked = time.monotonic(), time.process_time(), utcnow()
    while True:
        seen = await asyncio.to_thread(statuses, sessions, ids)
        took = time.monotonic() - t0
        if sum(seen.get(st, 0) for st in TERMINAL) == count or took > limit:
            break
        await asyncio.sleep(0.05)
    bad = {} if seen.get("deployed", 0) == count else await asyncio.to_thread(failures, sessions, ids)
    cpu = time.process_time() - cpu0
    starts = await asyncio.to_thread(start_latencies, sessions, ids, booked)
    return Run(count, took, seen.get("deployed", 0), bad, timed_out=took > limit, cpu=cpu, starts=starts)


def start_latencies(sessions: sessionmaker[Session], ids: list[int], booked: dt.datetime) -> list[float]:
    """When each deployment started (its "deploy started" event), in seconds after the booking,
    sorted: deployments started in waves show as a wide spread."""
    with sessions() as s:
        times = s.scalars(
            select(Event.time).where(
                Event.reservation_id.between(min(ids), max(ids)), Event.message == "deploy started"
            )
        ).all()
    return sorted((t - booked).total_seconds() for t in times)


@dataclass
class Run:
    nodes: int
    seconds: float
    deployed: int
    failed: dict[str, int]
    timed_out: bool
    cpu: float = 0.0  # CPU seconds of this process (executor and watcher), which load does not inflate
    events: int = 0
    reboots: int = 0
    batches: int = 0  # group commits written, and the transitions in them (in-process runs)
    batched: int = 0
    starts: list[float] = field(default_factory=list)  # start latencies (start_latencies)


def count_events(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as s:
        total = s.scalar(select(func.count()).select_from(Event)) or 0
        reboots = s.scalar(
            select(func.count()).select_from(Event).where(Event.message.like("%automatic hard reboot%"))
        ) or 0
    return total, reboots


async def run(url: str, folder: Path, sizes: list[int], delay: float, limit: float) -> tuple[Run, list[Run]]:
    upgrade("agent", url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    cfg_path = folder / "config_agent.json"
    cfg_path.write_text(
        json.dumps(
            {
                "auth_token": ["bench-token-0123456789"],
                "db_url": url,
                "poll_interval": 0.05,
                "max_concurrent_actions": max(256, *sizes),
                # The fake boot step reboots after 2 x scale s: always well past the step's delay.
                "timeout_scale": max(1.0, 2.0 * delay),
            }
        )
    )
    config = load_agent_config(cfg_path, check_files=False)
    # The garbage collector set up as `piseduce agent exec` sets it (run_executor).
    tune_gc()
    ex = Executor(config, sessions, FakeDriver(config, sessions), "bench")
    stop = asyncio.Event()
    task = asyncio.create_task(ex.run_forever(stop))
    runs = []
    try:
        one = await deploy(sessions, "solo", 1, delay, limit)
        for i, n in enumerate(sizes if one.deployed else []):
            batches0, batched0 = ex.journal.batches, ex.journal.entries
            before, reboots = await asyncio.to_thread(count_events, sessions)
            r = await deploy(sessions, f"n{i}_", n, delay, limit)
            after, reboots_after = await asyncio.to_thread(count_events, sessions)
            r.events, r.reboots = after - before, reboots_after - reboots
            r.batches, r.batched = ex.journal.batches - batches0, ex.journal.entries - batched0
            runs.append(r)
            if r.timed_out:
                break
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        engine.dispose()
    return one, runs


def report(label: str, one: Run, runs: list[Run]) -> bool:
    ok = True
    for r in [one, *runs]:
        if r.deployed < r.nodes:
            ok = False
            what = "timed out" if r.timed_out else "finished"
            print(f"[{label}] {r.nodes} nodes: {what} after {r.seconds:.1f} s with {r.deployed} deployed:")
            for reason, n in sorted(r.failed.items(), key=lambda kv: -kv[1]):
                print(f"    {n} x {reason}")
    if one.deployed < 1:
        return False
    print(f"[{label}] 1 node: {one.seconds:.2f} s")
    for r in runs:
        if r.deployed < r.nodes:
            continue  # its failures are above; a ratio of an unfinished run means nothing
        print(
            f"[{label}] {r.nodes} nodes: {r.seconds:.2f} s   "
            f"ratio {r.seconds / one.seconds:.2f}x the time of one   "
            f"{r.events / r.seconds:.0f} events committed/s   "
            f"CPU {r.cpu:.1f} s ({r.cpu * 1000 / max(r.events, 1):.2f} ms per event)   "
            f"{r.batched / max(r.batches, 1):.0f} transitions per group commit   "
            f"automatic reboots: {r.reboots}"
        )
        if r.starts:
            st = r.starts
            print(
                f"[{label}] {r.nodes} nodes: deployments started after {st[0]:.2f} s (first), "
                f"{st[len(st) // 2]:.2f} s (median), {st[-1]:.2f} s (last)"
            )
        ratio = r.seconds / one.seconds
        emit(f"engine {label}: N nodes / 1 node", f"{r.nodes} nodes", ratio, "x", TARGET_RATIO)
        per_event = r.cpu * 1000 / max(r.events, 1)
        emit(f"engine {label}: CPU per committed event", f"{r.nodes} nodes", per_event, "ms", None)
    return ok


RUN_EXECUTOR = (
    "import asyncio,sys; from piseduce.config import load_agent_config; "
    "from piseduce.agent.engine.executor import run_executor; "
    "asyncio.run(run_executor(load_agent_config(sys.argv[1])))"
)


def executor_config(folder: Path, url: str, count: int, delay: float) -> Path:
    path = folder / "config_exec.json"
    path.write_text(
        json.dumps(
            {
                "auth_token": ["bench-token-0123456789"],
                "db_url": url,
                "driver": "helpers.fake_driver:FakeDriver",
                "poll_interval": 0.05,
                "max_concurrent_actions": max(256, count),
                "timeout_scale": max(1.0, 2.0 * delay),
                "key_file": str(folder / "secret.key"),
            }
        )
    )
    return path


def wait_started(logs: list[Path], limit: float) -> bool:
    """Every executor said it started (its log line), within `limit` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if all(" started (lease " in p.read_text(errors="replace") for p in logs):
            return True
        time.sleep(0.1)
    return False


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


async def processes_run(
    url: str, folder: Path, executors: int, count: int, delay: float, limit: float
) -> Run:
    """`count` deployments served by `executors` executor processes sharing the database."""
    upgrade("agent", url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    config = executor_config(folder, url, count, delay)
    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    procs: list[subprocess.Popen[bytes]] = []
    logs = [folder / f"executor{i}.log" for i in range(executors)]
    try:
        for log_path in logs:
            with open(log_path, "wb") as out:
                cmd = [sys.executable, "-c", RUN_EXECUTOR, str(config)]
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder))
        if not await asyncio.to_thread(wait_started, logs, 60):
            print(f"[postgresql, {executors} executors] not all executors started within 60 s:")
            for log_path in logs:
                print(log_path.read_text(errors="replace")[-2000:])
            return Run(count, 0.0, 0, {"executors did not start": count}, timed_out=True)
        r = await deploy(sessions, f"p{executors}_", count, delay, limit)
        if r.deployed < r.nodes:
            for log_path in logs:
                print(f"--- {log_path.name} (end)\n" + log_path.read_text(errors="replace")[-2000:])
        return r
    finally:
        await asyncio.to_thread(stop_all, procs)
        engine.dispose()


def compare_executors(pg: str, count: int, delay: float, limit: float, steps: str = "") -> bool:
    """One executor process, then two, each on a fresh database, `count` deployments."""
    runs: dict[int, Run] = {}
    for executors in (1, 2):
        with fresh_database(pg) as url, tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            runs[executors] = asyncio.run(processes_run(url, Path(tmp), executors, count, delay, limit))
    ok = True
    for executors, r in runs.items():
        if r.deployed < r.nodes:
            ok = False
            what = "timed out" if r.timed_out else "finished"
            print(f"[postgresql, {executors} executors] {count} nodes: {what} with {r.deployed} deployed:")
            for reason, n in sorted(r.failed.items(), key=lambda kv: -kv[1]):
                print(f"    {n} x {reason}")
    if not ok:
        return False
    one, two = runs[1], runs[2]
    print(
        f"[postgresql{steps}] {count} nodes: one executor {one.seconds:.2f} s, "
        f"two executors {two.seconds:.2f} s"
    )
    label = f"engine postgresql{steps}: two executors / one"
    emit(label, f"{count} nodes", two.seconds / one.seconds, "x", 1.0)
    return two.seconds < one.seconds


@contextlib.contextmanager
def fresh_database(pg: str) -> Iterator[str]:
    """A throwaway database on the server of `pg`, dropped afterwards."""
    name = f"bench_engine_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts separated by commas (100,500)") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("give at least one node count, each at least 1")
    return sizes


def delays_arg(text: str) -> list[float]:
    try:
        delays = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: step delays in seconds separated by commas") from None
    if not delays or min(delays) <= 0:
        raise argparse.ArgumentTypeError("give at least one step delay, each above 0")
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=sizes_arg, default=[100, 500, 1000], help="node counts: 100,500,1000")
    parser.add_argument(
        "--delay", type=delays_arg, default=[0.5, 2.0], help="each step's run() in seconds, one run per delay"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each size's run (s)")
    parser.add_argument(
        "--executors-at", type=int, default=0, help="one vs two executors at this size (default: the largest)"
    )
    args = parser.parse_args()
    ok = True
    pg = os.environ.get("PISEDUCE_PG_URL")
    for delay in args.delay:
        # The table's rows of each delay are told apart by it (steps of `delay` s).
        steps = f", {delay:g} s steps"
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            folder = Path(tmp)
            url = f"sqlite:///{folder / 'agent.db'}"
            ok &= report("sqlite" + steps, *asyncio.run(run(url, folder, args.nodes, delay, args.timeout)))
        if not pg:
            continue
        with fresh_database(pg) as url, tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            runs = asyncio.run(run(url, Path(tmp), args.nodes, delay, args.timeout))
            ok &= report("postgresql" + steps, *runs)
        ok &= compare_executors(pg, args.executors_at or max(args.nodes), delay, args.timeout, steps)
    if not pg:
        print("PISEDUCE_PG_URL is not set: PostgreSQL skipped (./run bench starts a throwaway cluster)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
