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

3. pipelined (issue 15): the boards form a chain through the driver's own `Distributor` (each
   board's real `piseduce-node chain-write` writes its card and serves the next board at once; the
   agent sends the image once), for each size of `--chain` (default 16 and 48 boards): its time
   against one board's (targets: 16 boards <= 1.3x, 48 boards <= 1.5x) and the bytes the agent sent;
4. the same chain with one board powered off mid-transfer: the others finish (re-fed from the
   nearest healthy board), the killed one fails with the reason;
5. a 70 %-zeros image on wiped cards (sparse write): the time follows the image's data (the zeros
   cross no link: a run is a "zeros, N bytes" frame; its bound is the data at a card's speed);
   `--sparse-only` runs this part alone (with the one board it is compared with);
6. that image gzip-compressed (a saved environment): the agent decompresses it once into its raw
   cache (raw_cache.py, sparse) and the chain carries the raw copy; decompression plus chain
   against one board's time (target: the chain's), the decompression's rate against the
   worst-case agent speed the budgets assume (20 MB/s), the copy's disk use. The decompression
   runs at this host's speed, not scaled with the links and cards: at `--scale 8` it weighs an
   eighth of what it would at full speed (`--size-mb 96 --chain 3 --scale 8`, loaded 2-core host:
   decompressed once in 2.4 s at 43 MB/s, the copy 33 % of its size on disk, chain 22.3 s, in
   all 1.19x one board's 20.7 s; at scale 1 the decompression alone would be about one board's
   card time, since gzip here and a 40 MB/s card go at about the same speed).

Everything may be scaled down together (`--scale`): links, uplink and cards slower by the same
factor keep every ratio. `--scale 8 --size-mb 128` (links 125 Mbit/s, cards 5 MB/s) runs the
48-board chain in minutes on a 2-core machine.

Measured with the chain (`--size-mb 128 --boards 16 --chain 16,48 --scale 8`: links and uplink
125 Mbit/s, cards 5 MB/s; 2 CPUs shared with other helpers' test suites; two runs). Each chain
line is followed by the CPU it took: the boards' helpers (their `cpu_s`), the agent (this
process) and the whole host (/proc/stat), and the load average at its end.
- Before the pipelined board (a board wrote each 1 MiB to its card before serving it, so the
  card's flushes held up every hop, and boards pulled only once the last one's helper was up):
  one board 27.4 s; star of 16 145.8 s (1.06x the uplink bound); chain of 16 31.3 / 34.6 /
  32.7 s (1.13x / 1.25x / 1.19x); chain of 48 44.5 / 54.1 / 46.8 s (1.61x / 1.96x / 1.74x, over
  the 1.5x target); 16 with one powered off at a third 33.6 s (1.23x).
- Now (a board serves each 256 KiB as it arrives, its card trails by up to 32 MiB in a thread
  of its own, each board pulls as soon as its source serves): one board 27.4 / 27.2 s (1.02x its
  card bound); star of 16 145.1 / 146.1 s (1.06x the uplink bound); chain of 16 28.5 / 28.7 s
  (1.04x / 1.06x one board; target 1.3x), its helpers 12.3 / 14.9 CPU s in all, the host 48 / 43
  CPU s, load 4.9 / 5.6; chain of 48 32.6 / 32.4 s (1.19x / 1.19x; target 1.5x), its helpers
  41.6 / 42.9 CPU s (0.9 s a board for 128 MiB: hashing and copying), the host 54 / 63 CPU s of
  the 65 two cores have in that time (CPU-bound: load 19 / 25 at its end); the agent sent 1.00
  image every time (0.5-0.8 CPU s); 16 boards with one powered off at a third 29.5 / 29.5 s
  (1.08x), the others finished; a 70 %-zeros image on 16 wiped cards 13.0 / 13.6 s (its data
  alone would take 7.9 s, its size over a link 8.6 s); the .img.gz chain of 16 in all 1.07x.
- 70 %-zeros image on a chain of 48 wiped cards (`--boards 0 --chain 48 --sparse-only`, the host
  shared with other helpers' test suites): when the zeros crossed every link, 30.2 / 31.4 / 30.6 s
  (bound 8.6 s, its size over a link), the boards' helpers 50.2 / 53.4 / 50.9 CPU s (user 20.6,
  sys 25.7: the kernel's network work), the host 60-63 CPU s, load 42-45 (both cores busy); a
  zero test at C speed alone changed nothing. Now (zero runs as frames, from the agent and board
  to board; 38 MiB on the wire for the 128 MiB image) 15.1 / 17.4 / 18.0 / 20.6 s against a bound
  of 8.2 s (its 39 MiB of data at a card's speed), the helpers 23.2-29.2 CPU s (0.5-0.6 s a board:
  0.13 s of it starting Python, user 0.28 s and sys 0.32 s in all), the host 30-41 CPU s in that
  time: still CPU-bound on 2 cores, the rest of the gap being the other helpers' load.

The defaults are that run's (about 7 minutes here); the first baseline was
`--size-mb 1024 --boards 8 --chain '' --scale 1`.

    sudo python bench/bench_net_rpi.py [--size-mb 128] [--boards 16] [--chain 16,48] [--scale 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from piseduce.agent.drivers.raspberry import raw_cache
from piseduce.agent.drivers.raspberry import ssh as sshc
from piseduce.sim.images import build_environment
from piseduce.sim.rpi import TEMPLATE, prepare_pimaster
from piseduce.sim.rpi.cluster import ClusterOptions, RpiCluster
from piseduce.sim.rpi.mode import real_mode_problem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from results import emit  # noqa: E402

from helpers import chain_harness  # noqa: E402
from helpers.rpi_fixtures import make_agent_key  # noqa: E402

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


async def wipe(cluster: RpiCluster, name: str, key: Path) -> bool:
    """The destroy's wipe on one board; True when its card now reads as zeros."""
    board = cluster.board(name)
    host, port = board.address
    target = sshc.Target(host, port, "root", sshc.load_or_create_agent_key(key),
                         pinned=board.describe()["nfs_host_key"], timeout=30)
    conn, _ = await sshc.connect(target)
    async with conn:
        res = await sshc.run_helper(conn, ["piseduce-node", "wipe"], timeout=300)
    return res.get("card_zeroed") is True


class CpuMeter:
    """CPU beside wall time (the host's 2 cores are shared): the host's busy CPU seconds (every
    process, /proc/stat), the agent's (this process) and the load average at the end."""

    def __init__(self) -> None:
        self.host, self.agent = self._host(), time.process_time()

    @staticmethod
    def _host() -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    def line(self, boards_cpu: float | None = None) -> str:
        host, agent = self._host() - self.host, time.process_time() - self.agent
        load = Path("/proc/loadavg").read_text().split()[:3]
        on_boards = f"boards {boards_cpu:.1f} s (their helpers), " if boards_cpu is not None else ""
        return f"  CPU: {on_boards}agent {agent:.1f} s, host {host:.1f} s in all; load {' '.join(load)}"


def boards_cpu(results: dict[str, dict[str, Any] | str]) -> float:
    return sum(float(r.get("cpu_s") or 0) for r in results.values() if isinstance(r, dict))


def chain_target(boards: int) -> float:
    """Issue 15's targets: 16 boards within 1.3x one board's time, 48 within 1.5x."""
    return 1.3 if boards <= 16 else 1.5


async def main(size_mb: int, boards: int, chains: list[int], scale: float, sparse_only: bool = False) -> None:
    problem = real_mode_problem()
    if problem:
        print(f"bench_net_rpi: skipped, the real mode cannot run here: {problem}")
        return
    link, uplink, card_mbps = LINK_MBIT / scale, UPLINK_MBIT / scale, CARD_MBPS / scale
    tmp = Path(tempfile.mkdtemp(prefix="bench-net-rpi-"))
    try:
        key = make_agent_key(tmp)
        prepare_pimaster(tmp / "tftp", tmp / "nfs", Path(f"{key}.pub").read_text())
        env = build_environment(tmp / "img", "raspios", size_mb=size_mb, compress=None,
                                random_mb=max(0, min(size_mb // 2, (size_mb - 60) * 10 // 11)))
        image = tmp / "img" / env["image"]
        size = image.stat().st_size
        sha = sha256_file(image)
        count = max([boards, *chains, 1])
        opts = ClusterOptions(boards=count, state_dir=tmp / "state", tftp_root=tmp / "tftp",
                              nfs_root=tmp / "nfs", time_scale=40.0, boot_delay=20.0, mode="real",
                              card_write_mbps=(card_mbps, card_mbps), card_read_mbps=44.0 / scale,
                              link_mbit=link, uplink_mbit=uplink)
        scale_words = f"scale 1/{scale:g}: " if scale != 1 else ""
        async with RpiCluster(opts) as cluster:
            print(f"{cluster.mode_line()}; {scale_words}links {link:.0f} Mbit/s, uplink {uplink:.0f} Mbit/s, "
                  f"cards {card_mbps:g} MB/s; image {size / 2**20:.0f} MiB raw; {os.cpu_count()} CPUs")
            for b in cluster.boards:
                shutil.copytree(tmp / "tftp" / TEMPLATE, tmp / "tftp" / b.identity.serial)
                cluster.set_port_enabled(b.identity.port, True)
            link_s, card_s = size * 8 / (link * 1e6), size / (card_mbps * 1e6)
            one = await write_one(cluster, "pi-1", key, image, sha)
            what = "card-bound" if card_s >= link_s else "link-bound"
            report("1 board ", one, size, max(link_s, card_s), what)
            sized = f"{size >> 20} MiB, cards {card_mbps:g} MB/s, links {link:.0f} Mbit/s"
            emit("net rpi: one board, direct", sized, one, "s", None)
            emit("net rpi: physical bound of one board (card or link)", sized, max(link_s, card_s), "s", None)
            emit("net rpi: one board, direct / card bound", sized, one / max(link_s, card_s), "x", None)
            many = 0.0
            if boards > 1:
                cpu = CpuMeter()
                started = time.perf_counter()
                await asyncio.gather(*(write_one(cluster, b.name, key, image, sha)
                                       for b in cluster.boards[:boards]))
                many = time.perf_counter() - started
                uplink_s = boards * size * 8 / (uplink * 1e6)
                bound = max(uplink_s, link_s, card_s)
                report(f"{boards} boards, star", many, boards * size, bound,
                       "uplink-bound: a star, every byte crosses it" if bound == uplink_s else "card-bound")
                print(cpu.line())
                emit(f"net rpi: star of {boards} boards", sized, many, "s", round(bound * 1.3, 1))
                emit(f"net rpi: physical bound of a star of {boards} (uplink)", sized, bound, "s", None)
                emit(f"net rpi: star of {boards} boards / one board", sized, many / one, "x", None)
            agent_key = sshc.load_or_create_agent_key(key)
            for n in [] if sparse_only else chains:
                names = [b.name for b in cluster.boards[:n]]
                cpu = CpuMeter()
                run = await chain_harness.run_chain(cluster, names, agent_key, image, sha)
                failed = {k: v for k, v in run.results.items() if isinstance(v, str)}
                if failed:
                    raise RuntimeError(f"chain of {n}: {failed}")
                star_s = n * size * 8 / (uplink * 1e6)
                report(f"{n} boards, chain", run.took, n * size, max(link_s, card_s),
                       f"one card's time; a star would need {star_s:.0f} s through the uplink")
                print(f"  {run.took / one:.2f}x one board (target {chain_target(n)}x); star measured: "
                      f"{f'{many:.1f} s for {boards}' if boards > 1 else 'not run'}; the agent sent "
                      f"{run.sent / size:.2f} images for {n} boards")
                print(cpu.line(boards_cpu(run.results)))
                emit(f"net rpi: chain of {n} boards", sized, run.took, "s", None)
                emit(f"net rpi: physical bound of a star of {n} (uplink)", sized, star_s, "s", None)
                emit(f"net rpi: chain of {n} boards / one board", sized, run.took / one, "x", chain_target(n))
                emit(f"net rpi: chain of {n} boards, images the agent sent", sized, run.sent / size, "images",
                     1.0)
            n = min(chains) if chains else 0
            if n >= 3 and not sparse_only:
                names = [b.name for b in cluster.boards[:n]]
                victim = names[len(names) // 3]
                cpu = CpuMeter()
                run = await chain_harness.run_chain(cluster, names, agent_key, image, sha, kill=victim,
                                                kill_after=size // 3)
                failed = {k: v for k, v in run.results.items() if isinstance(v, str)}
                print(f"{n} boards, chain, {victim} powered off at 1/3: {run.took:6.1f} s; "
                      f"{n - len(failed)} finished; {victim}: {failed.get(victim, 'did not fail!')}")
                print(cpu.line(boards_cpu(run.results)))
                if set(failed) != {victim}:
                    raise RuntimeError(f"chain with {victim} killed: {failed}")
                emit(f"net rpi: chain of {n}, one board killed / one board", sized, run.took / one, "x",
                     chain_target(n))
                cluster.set_port_enabled(cluster.board(victim).identity.port, True)
                await wait_nfs(cluster, victim)
            if n >= 2:
                zimg = tmp / "img-zeros"
                zenv = build_environment(zimg, "raspios", size_mb=size_mb, compress=None,
                                         random_mb=max(1, size_mb * 3 // 10))
                zimage = zimg / zenv["image"]
                zsha = sha256_file(zimage)
                names = [b.name for b in cluster.boards[:n]]
                wiped = await asyncio.gather(*(wipe(cluster, name, key) for name in names))
                if not all(wiped):
                    raise RuntimeError("a wipe did not zero its card")
                cpu = CpuMeter()
                run = await chain_harness.run_chain(cluster, names, agent_key, zimage, zsha, sparse=True)
                results = [v for v in run.results.values() if isinstance(v, dict)]
                if len(results) != n:
                    raise RuntimeError(f"sparse chain: {run.results}")
                data = max(int(r.get("card_bytes") or 0) for r in results)
                # The zeros cross no link (a frame header stands for a run): the image's data at
                # the slower of a card and a link is the bound.
                data_s = max(data / (card_mbps * 1e6), data * 8 / (link * 1e6))
                zeros = 100 - data * 100 // size
                report(f"{n} boards, chain, wiped cards, {zeros} % zeros", run.took, n * size, data_s,
                       f"the image's {data >> 20} MiB of data at the card's speed (its size over a link: "
                       f"{link_s:.1f} s)")
                print(f"  the agent sent {run.sent / size:.2f} images in {run.wire >> 20} MiB on the wire")
                print(cpu.line(boards_cpu(run.results)))
                emit(f"net rpi: chain of {n}, 70 % zeros on wiped cards / one board (full image)", sized,
                     run.took / one, "x", 0.5)
                if not sparse_only:
                    await compressed_chain(cluster, names, agent_key, zimage, tmp, one, sized)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def compressed_chain(cluster: RpiCluster, names: list[str], agent_key: Any, raw: Path, tmp: Path,
                           one: float, sized: str) -> None:
    """A .img.gz environment chained: one decompression into the raw cache, then the chain."""
    gz = tmp / "img-gz" / f"{raw.name}.gz"
    gz.parent.mkdir()
    with raw.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    key = sha256_file(gz)
    cache = raw_cache.RawCache(tmp / "cache", 1 << 40)
    started = time.perf_counter()
    entry, _ = await cache.acquire(gz, key, no_progress)
    unpack = time.perf_counter() - started
    run = await chain_harness.run_chain(cluster, names, agent_key, entry.path, entry.sha256)
    cache.release(key)
    total = unpack + run.took
    failed = {k: v for k, v in run.results.items() if isinstance(v, str)}
    if failed:
        raise RuntimeError(f"compressed chain: {failed}")
    disk = raw_cache.disk_bytes(entry.path)
    n = len(names)
    print(f"{n} boards, chain of a .img.gz ({gz.stat().st_size >> 20} MiB): decompressed once in "
          f"{unpack:.1f} s "
          f"({entry.size / unpack / 1e6:.0f} MB/s; the raw copy takes {disk * 100 // entry.size} % of its "
          f"size on disk), chain {run.took:.1f} s, in all {total:.1f} s ({total / one:.2f}x one board)")
    emit(f"net rpi: chain of {n}, .img.gz (decompressed once + chain) / one board", sized, total / one, "x",
         chain_target(n))
    emit("net rpi: raw cache decompression rate (gzip)", sized, entry.size / unpack / 1e6, "MB/s",
         raw_cache.WORST_CASE_DECOMPRESS_BPS / 1e6, lower=False)
    emit("net rpi: raw cache copy of a 70 %-zeros image, disk / size", sized, disk / entry.size, "x", 0.4)
    emit(f"net rpi: chain of {n}, .img.gz, decompressions", sized, cache.builds, "", 1.0)


async def wait_nfs(cluster: RpiCluster, name: str) -> None:
    board = cluster.board(name)
    deadline = time.monotonic() + 120
    while board.system != "nfs" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=int(os.environ.get("BENCH_NET_SIZE_MB", 128)))
    ap.add_argument("--boards", type=int, default=int(os.environ.get("BENCH_NET_BOARDS", 16)),
                    help="boards of the star (0: skip it)")
    ap.add_argument("--chain", default=os.environ.get("BENCH_NET_CHAIN", "16,48"),
                    help="chain sizes, comma-separated ('' to skip)")
    ap.add_argument("--scale", type=float, default=float(os.environ.get("BENCH_NET_SCALE", 8)),
                    help="links, uplink and cards this many times slower (ratios kept)")
    ap.add_argument("--sparse-only", action="store_true",
                    help="of the chains, only the 70 %%-zeros one on wiped cards (part 5), "
                    "at the smallest --chain")
    args = ap.parse_args()
    chains = [int(x) for x in args.chain.split(",") if x.strip()]
    asyncio.run(main(args.size_mb, args.boards, chains, args.scale, args.sparse_only))
