"""Image distribution over the real board network: the baseline of later work on it.

The simulated cluster in the real mode (root): boards are Linux hosts on a bridged board network,
each behind a 1 Gbit/s link (tc token bucket), the switch behind a 1 Gbit/s uplink to this host,
and cards that write at 40 MB/s. A raw 1 GiB image is written by the agent's own path (its SSH
client, `stream_file_to_helper`, the board's sshd and the real `piseduce-node write-image`):

1. to one board: the card is the bottleneck, 1 GiB / 40 MB/s = 26.8 s;
2. to 8 boards at once: star topology, every byte crosses the uplink, 8 GiB / 125 MB/s = 68.7 s.

Each is printed with its physical bound (the slowest of link, uplink and card) and the ratio.
First baseline (2 shared CPUs, other test suites running): one board 28.5 s (1.06x the card
bound), eight boards 86.6 s, 99 MB/s in all (1.26x the uplink bound).

    sudo python bench/bench_net_rpi.py [--size-mb 1024] [--boards 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.sim.images import build_environment
from piseduce.sim.rpi import TEMPLATE, prepare_pimaster
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster
from piseduce.sim.rpi.mode import real_mode_problem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.rpi_fixtures import make_agent_key  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import emit  # noqa: E402

LINK_MBIT = 1000.0
UPLINK_MBIT = 1000.0
CARD_MBPS = 40.0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def no_progress(_: Any) -> None:
    return None


async def write_one(cluster: RpiCluster, name: str, key: Path, image: Path, sha: str) -> float:
    board = cluster.board(name)
    while board.system != "nfs":
        if board.system == "none":
            raise RuntimeError(f"{name} did not boot: {board.last_boot_error}")
        await asyncio.sleep(0.05)
    host, port = board.address
    target = sshc.Target(host, port, "root", sshc.load_or_create_agent_key(key),
                         pinned=board.describe()["nfs_host_key"], timeout=30)
    conn, _ = await sshc.connect(target)
    size = image.stat().st_size
    argv = ["piseduce-node", "write-image", "--sha256", sha, "--size", str(size), "--no-verify"]
    started = time.perf_counter()
    try:
        result = await sshc.stream_file_to_helper(conn, argv, image, on_progress=no_progress,
                                                  stall_timeout=120)
    finally:
        conn.close()
    took = time.perf_counter() - started
    assert result.get("sha256") == sha, result
    return took


def report(label: str, took: float, total: int, bound_s: float, what: str) -> None:
    rate = total / took / 1e6
    print(f"{label}: {took:6.1f} s, {rate:6.1f} MB/s; physical bound {bound_s:5.1f} s ({what}); "
          f"ratio {took / bound_s:.2f}x")


# A write within this factor of its physical bound meets its target.
BOUND_ALLOWANCE = 1.3


def record(label: str, took: float, total: int, bound_s: float) -> None:
    """The figure for the closing table: seconds, against the physical bound plus the allowance."""
    emit(f"net rpi: raw image to {label.strip()} (star)", f"{total / 2**30:.2f} GiB in all", took, "s",
         round(bound_s * BOUND_ALLOWANCE, 1))


async def main(size_mb: int, boards: int) -> None:
    problem = real_mode_problem()
    if problem:
        print(f"bench_net_rpi: skipped, the real mode cannot run here: {problem}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-net-rpi-"))
    try:
        key = make_agent_key(tmp)
        prepare_pimaster(tmp / "tftp", tmp / "nfs", Path(f"{key}.pub").read_text())
        env = build_environment(tmp / "img", "raspios", size_mb=size_mb, compress=None)
        image = tmp / "img" / env["image"]
        size = image.stat().st_size
        sha = sha256_file(image)
        opts = ClusterOptions(boards=boards, state_dir=tmp / "state", tftp_root=tmp / "tftp",
                              nfs_root=tmp / "nfs", time_scale=40.0, boot_delay=20.0, mode="real",
                              card_write_mbps=(CARD_MBPS, CARD_MBPS), card_read_mbps=44.0,
                              link_mbit=LINK_MBIT, uplink_mbit=UPLINK_MBIT)
        async with RpiCluster(opts) as cluster:
            print(f"{cluster.mode_line()}; links {LINK_MBIT:.0f} Mbit/s, uplink {UPLINK_MBIT:.0f} Mbit/s, "
                  f"cards {CARD_MBPS:.0f} MB/s; image {size / 2**30:.2f} GiB raw; {os.cpu_count()} CPUs")
            for b in cluster.boards:
                shutil.copytree(tmp / "tftp" / TEMPLATE, tmp / "tftp" / b.identity.serial)
                cluster.set_port_enabled(b.identity.port, True)
            link_s, card_s = size * 8 / (LINK_MBIT * 1e6), size / (CARD_MBPS * 1e6)
            one = await write_one(cluster, "pi-1", key, image, sha)
            what = "card-bound" if card_s >= link_s else "link-bound"
            report("1 board ", one, size, max(link_s, card_s), what)
            record("1 board", one, size, max(link_s, card_s))
            started = time.perf_counter()
            await asyncio.gather(*(write_one(cluster, b.name, key, image, sha) for b in cluster.boards))
            many = time.perf_counter() - started
            uplink_s = boards * size * 8 / (UPLINK_MBIT * 1e6)
            bound = max(uplink_s, link_s, card_s)
            report(f"{boards} boards", many, boards * size, bound,
                   "uplink-bound: a star, every byte crosses it" if bound == uplink_s else "card-bound")
            record(f"{boards} boards", many, boards * size, bound)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=int(os.environ.get("BENCH_NET_SIZE_MB", 1024)))
    ap.add_argument("--boards", type=int, default=int(os.environ.get("BENCH_NET_BOARDS", 8)))
    args = ap.parse_args()
    asyncio.run(main(args.size_mb, args.boards))
