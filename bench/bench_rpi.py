"""Raspberry deployments at scale: N simulated boards deploying at once versus one board alone.

Each run starts, in separate processes, the simulated cluster (`piseduce sim rpi`) and the executor
(`piseduce agent exec`), registers the switch, boards and a small environment in a fresh SQLite
database, books every board with a deploy form already filled (as the API does), and times until
every reservation is deployed. The executor's CPU time and peak memory come from its rusage.

    python bench/bench_rpi.py [--boards 200] [--time-scale 2] [--size-mb 56] [--random-mb 0]

With `--random-mb N` (and `--size-mb` about 56 + 1.1 N) the image holds N MB of incompressible
data: the transfer and the cards' work follow its size, as with a real system image.

Everything runs on this machine: the simulator does the boards' real work (gunzip, write and
re-read of each card image, resize2fs, mkfs...), so on few cores the big run is bounded by that
work, not by the executor; the simulator's own CPU time is printed too for that reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.agent.drivers.raspberry.driver import generate_password
from piseduce.agent.lifecycle import SCHEDULED
from piseduce.agent.models import Reservation
from piseduce.config import load_agent_config
from piseduce.db import make_engine, session_factory, upgrade, write_session
from piseduce.sim.images import ImageBuildError, build_environment
from piseduce.sim.rpi.card import parse_speed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402

from helpers.raspberry_helpers import add_environment, register  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PISEDUCE = [sys.executable, "-c", "from piseduce.cli import main; main()"]


def _rusage(pid: int) -> tuple[int, Any]:
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.1)


def run(
    boards: int, time_scale: float, image: dict[str, Any], image_dir: Path, work: Path, card_speed: str
) -> dict[str, Any]:
    work.mkdir(parents=True)
    for sub in ("tftpboot", "nfs", "environments"):
        (work / sub).mkdir()
    os.link(image_dir / image["image"], work / "environments" / image["image"])
    agent_key = work / "agent_key"
    sshc.load_or_create_agent_key(agent_key)
    inventory_file = work / "inventory.json"
    sim = subprocess.Popen(
        [
            *PISEDUCE,
            "sim",
            "rpi",
            "--boards",
            str(boards),
            "--state-dir",
            str(work / "sim"),
            "--tftp-root",
            str(work / "tftpboot"),
            "--nfs-root",
            str(work / "nfs"),
            "--time-scale",
            str(time_scale),
            "--inventory-file",
            str(inventory_file),
            "--agent-pubkey",
            f"{agent_key}.pub",
            "--seed",
            "7",
            "--card-speed",
            card_speed,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    executor: subprocess.Popen[bytes] | None = None
    try:
        _wait_file(inventory_file, sim, 120)
        inv = json.loads(inventory_file.read_text())
        # The real boot time of each board (20 simulated seconds) sets the scale of every timeout.
        config_path = work / "config_agent.json"
        config_path.write_text(
            json.dumps(
                {
                    "auth_token": ["bench-token-0123456789"],
                    "node_type": "raspberry",
                    "db_url": "sqlite:///agent.db",
                    "tftp_root": "tftpboot",
                    "nfs_root": "nfs",
                    "env_path": "environments/",
                    "ssh_key_file": "agent_key",
                    "timeout_scale": max(0.01, 1.0 / time_scale),
                    "poll_interval": 0.2,
                    "max_concurrent_actions": 1000,
                }
            )
        )
        config = load_agent_config(config_path)
        upgrade("agent", config.database_url)
        engine = make_engine(config.database_url)
        sessions = session_factory(engine)
        now = dt.datetime.now(dt.UTC)
        # Switch, boards and image stored as an admin registers them (the tests' own helpers).
        register(sessions, inv)
        add_environment(sessions, image)
        with write_session(sessions) as s:
            for b in inv["boards"]:
                s.add(
                    Reservation(
                        node_name=b["name"],
                        owner="bench@example.org",
                        start=now,
                        end=now + dt.timedelta(hours=2),
                        busy_until=now + dt.timedelta(hours=2),
                        status=SCHEDULED,
                        params={
                            "environment": image["name"],
                            "part_size": "whole",
                            "ssh_keys": [],
                            "os_password": generate_password(),
                        },
                    )
                )
        started = time.monotonic()
        # BENCH_RPI_PROFILE=<file>: profile the executor with cProfile (for looking into its CPU time).
        profile = os.environ.get("BENCH_RPI_PROFILE")
        prefix = PISEDUCE
        if profile:
            prefix = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "piseduce.cli"]
        executor = subprocess.Popen(
            [*prefix, "agent", "exec", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = started + 1800
        while True:
            with sessions() as s:
                counts = dict(
                    s.execute(select(Reservation.status, func.count()).group_by(Reservation.status)).all()
                )
            finished = counts.get("deployed", 0) + counts.get("failed", 0)
            if finished >= boards:
                break
            if executor.poll() is not None:
                raise RuntimeError(f"the executor exited ({executor.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not finished after 30 min: {counts}")
            time.sleep(0.2)
        wall = time.monotonic() - started
        with sessions() as s:
            reasons = Counter(
                e[:160] for e in s.scalars(select(Reservation.error).where(Reservation.status == "failed"))
            )
        executor.send_signal(signal.SIGTERM)
        _, usage = _rusage(executor.pid)
        executor.returncode = 0
        executor = None
        sim.send_signal(signal.SIGTERM)
        _, sim_usage = _rusage(sim.pid)
        sim.returncode = 0
        engine.dispose()
        return {
            "boards": boards,
            "wall": wall,
            "deployed": counts.get("deployed", 0),
            "failed": counts.get("failed", 0),
            "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024,
            "sim_cpu": sim_usage.ru_utime + sim_usage.ru_stime,
            "reasons": reasons.most_common(3),
        }
    finally:
        for proc in (executor, sim):
            if proc is not None and proc.returncode is None:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boards", type=int, default=int(os.environ.get("BENCH_RPI_BOARDS", 200)))
    ap.add_argument(
        "--time-scale",
        type=float,
        default=float(os.environ.get("BENCH_RPI_TIME_SCALE", 2.0)),
        help="simulated seconds per real second (a boot is 20 simulated seconds)",
    )
    ap.add_argument("--size-mb", type=int, default=56, help="uncompressed size of the environment image")
    ap.add_argument("--random-mb", type=int, default=0,
                    help="MB of random (incompressible) data in the image; --size-mb must leave room "
                         "(about 56 + 1.1 x this)")
    ap.add_argument("--card-speed", default=os.environ.get("BENCH_RPI_CARD_SPEED", "realistic"),
                    help="SD card speed of the simulated boards (piseduce sim rpi --card-speed): realistic "
                         "(20-40 MB/s write, 44 MB/s read), unlimited, W1-W2:R")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rpi-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            image = build_environment(
                tmp / "images", "raspios", size_mb=args.size_mb, compress="gz", random_mb=args.random_mb
            )
        except ImageBuildError as exc:
            raise SystemExit(f"bench_rpi: {exc}") from None
        print(
            f"raspberry deployments: image {image['size'] >> 20} MB "
            f"({(tmp / 'images' / image['image']).stat().st_size >> 10} KB gz), "
            f"boot {20 / args.time_scale:.1f} s, cards {args.card_speed}, {os.cpu_count()} CPUs"
        )
        write, read = parse_speed(args.card_speed)
        if write is not None:
            # Board 1 has the slowest card (the spread starts at the low end): one board alone is bound by it.
            card_s = image["size"] / (write[0] * 1e6) + (image["size"] / (read * 1e6) if read else 0.0)
            print(f"  card time of one image on the slowest card (write + read-back): {card_s:.1f} s")
        one = run(1, args.time_scale, image, tmp / "images", tmp / "one", args.card_speed)
        many = run(args.boards, args.time_scale, image, tmp / "images", tmp / "many", args.card_speed)
    for r in (one, many):
        print(
            f"  {r['boards']:4d} board(s): {r['wall']:7.1f} s wall, {r['deployed']} deployed, "
            f"{r['failed']} failed; "
            f"executor {r['cpu']:6.1f} s CPU, peak {r['rss_mb']:5.0f} MB; simulator {r['sim_cpu']:6.1f} s CPU"
        )
        for reason, count in r["reasons"]:
            print(f"      {count} failed: {reason}")
    size = f"{many['boards']} boards, {image['size'] >> 20} MB image"
    emit("raspberry: N boards / 1 board wall time", size, many["wall"] / one["wall"], "x", 1.1)
    cpus = os.cpu_count() or 1
    floor = (many["cpu"] + many["sim_cpu"]) / cpus
    print(
        f"  executor CPU per board: {many['cpu'] / many['boards'] * 1000:.0f} ms; "
        f"harness CPU {resource.getrusage(resource.RUSAGE_SELF).ru_utime:.1f} s"
    )
    # Nothing can finish before the CPU work of executor + boards is spread over the cores.
    print(
        f"  lower bound of the {many['boards']}-board wall time on {cpus} CPUs: "
        f"max({one['wall']:.1f} s alone, {floor:.1f} s of CPU work / {cpus}) "
        f"= {max(one['wall'], floor):.1f} s; "
        f"measured / bound = {many['wall'] / max(one['wall'], floor):.2f}"
    )


if __name__ == "__main__":
    main()
