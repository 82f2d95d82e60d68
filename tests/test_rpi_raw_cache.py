"""The agent's raw cache of compressed environments (raspberry, raw_cache.py): one sparse raw copy
per image, built once however many boards ask, never half-written, bounded, and dropped with its
environment. The chains that use it run in test_rpi_chain_compressed.py."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import lzma
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard

from helpers.agent_helpers import ADMIN
from helpers.raspberry_helpers import agent_config
from helpers.switch_fixtures import Ports
from helpers.waiting import wait_until
from piseduce.agent.drivers.raspberry import raw_cache
from piseduce.agent.drivers.raspberry.raw_cache import BuildProgress, CacheError, RawCache
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo

MIB = 1 << 20


def seventy_percent_zeros(mib: int = 20, seed: int = 7) -> bytes:
    """`mib` MiB, 30 % of its 1 MiB blocks random (spread out), the rest zeros, a ragged tail."""
    rnd = hashlib.sha256(str(seed).encode()).digest()
    blocks = []
    for i in range(mib):
        if i % 10 in (1, 4, 8):
            blocks.append(os.urandom(MIB))
        else:
            blocks.append(bytes(MIB))
    return b"".join(blocks) + rnd[:1000]


def compress(data: bytes, fmt: str) -> bytes:
    if fmt == "gz":
        return gzip.compress(data, 1)
    if fmt == "xz":
        return lzma.compress(data, preset=0)
    return zstandard.ZstdCompressor(level=1).compress(data)


def write_image(folder: Path, data: bytes, fmt: str, name: str = "img") -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.img.{fmt}"
    path.write_bytes(compress(data, fmt))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


async def no_progress(p: BuildProgress) -> None:
    return None


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


@pytest.mark.parametrize("fmt", ["gz", "xz", "zst"])
async def test_the_raw_copy_is_sparse_right_and_reused(tmp_path: Path, fmt: str) -> None:
    data = seventy_percent_zeros()
    image, key = write_image(tmp_path / "env", data, fmt)
    cache = RawCache(tmp_path / "cache", 10 << 30)
    entry, built = await cache.acquire(image, key, no_progress)
    cache.release(key)
    assert built and cache.builds == 1
    assert entry.path == tmp_path / "cache" / "raw" / f"{key}.img"
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.path.read_bytes() == data
    st = entry.path.stat()
    # 70 % zeros: the copy takes about 30 % of its size on disk (plus the filesystem's slack).
    assert st.st_blocks * 512 <= 0.4 * st.st_size, (st.st_blocks * 512, st.st_size)
    assert st.st_mode & 0o777 == 0o600 and (tmp_path / "cache" / "raw").stat().st_mode & 0o777 == 0o700
    sidecar = entry.path.with_suffix(".sha256")
    assert sidecar.read_text() == f"{entry.sha256}  {key}.img\n"  # sha256sum -c reads it
    # The second deployment, and an agent restarted, use it: no second decompression.
    again, built = await cache.acquire(image, key, no_progress)
    cache.release(key)
    assert again == entry and not built and cache.builds == 1
    restarted = RawCache(tmp_path / "cache", 10 << 30)
    third, built = await restarted.acquire(image, key, no_progress)
    assert third == entry and not built and restarted.builds == 0


async def test_sixteen_boards_asking_at_once_decompress_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = seventy_percent_zeros(24)
    image, key = write_image(tmp_path / "env", data, "xz")
    calls: list[str] = []
    real = raw_cache._decompress

    def counted(*args: Any) -> raw_cache.RawEntry:
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(raw_cache, "_decompress", counted)
    cache = RawCache(tmp_path / "cache", 10 << 30, report_every=0.05)
    seen: list[tuple[int, int]] = []

    async def report(p: BuildProgress) -> None:
        seen.append((p.read, p.total))

    got = await asyncio.gather(*(cache.acquire(image, key, report) for _ in range(16)))
    assert calls == [key] and cache.builds == 1
    assert {e for e, _ in got} == {got[0][0]} and got[0][0].sha256 == hashlib.sha256(data).hexdigest()
    assert cache.in_use[key] == 16
    # Progress counts the compressed bytes read, of the file's size.
    assert all(total == image.stat().st_size and 0 <= read <= total for read, total in seen)


@pytest.mark.parametrize("damage", ["truncated", "garbled", "empty"])
async def test_a_corrupt_image_fails_every_asker_and_leaves_no_entry(tmp_path: Path, damage: str) -> None:
    good = compress(seventy_percent_zeros(8), "gz")
    bad = {"truncated": good[: len(good) // 2],
           "garbled": good[:5000] + bytes(b ^ 0x5A for b in good[5000:9000]) + good[9000:],
           "empty": gzip.compress(b"")}[damage]
    image = tmp_path / "env" / "bad.img.gz"
    image.parent.mkdir()
    image.write_bytes(bad)
    key = hashlib.sha256(bad).hexdigest()
    cache = RawCache(tmp_path / "cache", 10 << 30)
    got = await asyncio.gather(*(cache.acquire(image, key, no_progress) for _ in range(3)),
                               return_exceptions=True)
    assert all(isinstance(g, CacheError) for g in got), got
    reasons = {str(g) for g in got}
    assert len(reasons) == 1
    reason = reasons.pop()
    assert reason.startswith("bad.img.gz ") and ("gz" in reason or "no image data" in reason), reason
    assert leftovers(tmp_path / "cache" / "raw") == [] and not cache.in_use
    assert raw_cache.lookup(cache.folder, key) is None


async def test_the_boards_that_come_after_a_failed_decompression_get_its_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded host the boards of one deployment reach write_image seconds apart: one joining
    the decompression of a corrupt image gets its error, and so do those coming after it failed,
    without decompressing it again (issue 15: the chained corrupt-image test was flaky)."""
    good = compress(seventy_percent_zeros(8), "gz")
    bad = good[: len(good) // 2]
    image = tmp_path / "env" / "bad.img.gz"
    image.parent.mkdir()
    image.write_bytes(bad)
    key = hashlib.sha256(bad).hexdigest()
    calls: list[str] = []
    real_decompress, real_stream = raw_cache._decompress, raw_cache.decompressed

    def counted(*args: Any) -> raw_cache.RawEntry:
        calls.append(args[2])
        return real_decompress(*args)

    def slow_stream(*args: Any) -> Any:
        for chunk in real_stream(*args):
            time.sleep(0.05)  # a slow agent: the second board joins while it runs
            yield chunk

    monkeypatch.setattr(raw_cache, "_decompress", counted)
    monkeypatch.setattr(raw_cache, "decompressed", slow_stream)
    cache = RawCache(tmp_path / "cache", 10 << 30, report_every=0.02, remember_failure=600)
    running = asyncio.Event()

    async def report(p: BuildProgress) -> None:
        running.set()

    first = asyncio.create_task(cache.acquire(image, key, report))
    await asyncio.wait_for(running.wait(), 60)
    joining = asyncio.create_task(cache.acquire(image, key, no_progress))
    got: list[Any] = list(await asyncio.gather(first, joining, return_exceptions=True))
    assert not cache._building
    for _ in range(2):  # the late boards: the build is over
        try:
            got.append(await cache.acquire(image, key, no_progress))
        except CacheError as exc:
            got.append(exc)
    assert all(isinstance(g, CacheError) for g in got), got
    assert calls == [key]
    reasons = {str(g) for g in got}
    assert len(reasons) == 1 and reasons.pop().startswith("bad.img.gz cannot be decompressed: "), got
    assert leftovers(cache.folder) == [] and not cache.in_use and not cache._waiters
    # The failure answers for that file only: a file put in its place is tried again at once.
    replacement = image.with_name("new.img.gz")
    replacement.write_bytes(bad)
    os.replace(replacement, image)
    with pytest.raises(CacheError, match="cannot be decompressed"):
        await cache.acquire(image, key, no_progress)
    assert calls == [key, key]


async def test_a_failed_decompression_is_forgotten_after_its_deployment_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure is the deployment's: a later one (the same file) decompresses it again."""
    bad = compress(seventy_percent_zeros(4), "xz")[:20000]
    image = tmp_path / "env" / "bad.img.xz"
    image.parent.mkdir()
    image.write_bytes(bad)
    key = hashlib.sha256(bad).hexdigest()
    calls: list[str] = []
    real = raw_cache._decompress

    def counted(*args: Any) -> raw_cache.RawEntry:
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(raw_cache, "_decompress", counted)
    cache = RawCache(tmp_path / "cache", 10 << 30, remember_failure=0.5)
    for _ in range(2):
        with pytest.raises(CacheError, match="truncated"):
            await cache.acquire(image, key, no_progress)
    assert calls == [key]
    # A board of that deployment left alone (direct path) fails with it too: no corrupt write.
    reason = await cache.failure_of(image, key)
    assert reason is not None and "truncated" in reason
    await asyncio.sleep(0.6)
    assert await cache.failure_of(image, key) is None
    with pytest.raises(CacheError, match="truncated"):
        await cache.acquire(image, key, no_progress)
    assert calls == [key, key] and not cache.in_use


KILLED = """
import os, sys, time
from pathlib import Path
from piseduce.agent.drivers.raspberry import raw_cache
real = os.pwrite
def slow(*a):
    time.sleep(0.3)  # a slow agent: the test kills it mid-way
    return real(*a)
os.pwrite = slow
raw_cache.build(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], raw_cache.BuildProgress(),
                __import__("threading").Event())
"""


async def test_an_agent_killed_mid_decompression_leaves_a_part_the_next_run_discards(tmp_path: Path) -> None:
    data = seventy_percent_zeros(20)
    image, key = write_image(tmp_path / "env", data, "gz")
    folder = tmp_path / "cache" / "raw"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(image), str(folder), key])
    try:
        await wait_until(lambda: any(p.name.startswith(f"{key}.img.part-") and p.stat().st_blocks
                                     for p in folder.glob("*.part-*")), 60, 0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    parts = [p.name for p in folder.glob("*.part-*")]
    assert len(parts) == 1 and parts[0].startswith(f"{key}.img.part-{proc.pid}-")
    assert raw_cache.lookup(folder, key) is None  # a part is no entry
    cache = RawCache(tmp_path / "cache", 10 << 30)
    entry, built = await cache.acquire(image, key, no_progress)
    assert built and entry.path.read_bytes() == data
    assert leftovers(folder) == [f"{key}.img", f"{key}.sha256"]


async def test_a_step_stopped_alone_stops_the_decompression(tmp_path: Path) -> None:
    image, key = write_image(tmp_path / "env", seventy_percent_zeros(48), "xz")
    cache = RawCache(tmp_path / "cache", 10 << 30, report_every=0.02)
    started = asyncio.Event()

    async def report(p: BuildProgress) -> None:
        started.set()

    task = asyncio.create_task(cache.acquire(image, key, report))
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 60
    while cache._building and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not cache._building and not cache.in_use
    assert leftovers(cache.folder) == []


async def test_the_size_cap_removes_the_least_recently_used_not_one_in_use(tmp_path: Path) -> None:
    images = [write_image(tmp_path / "env", seventy_percent_zeros(10, seed=i), "gz", f"i{i}")
              for i in range(3)]
    # Each copy takes about 3 MiB of disk: room for two.
    cache = RawCache(tmp_path / "cache", 7 * MIB)
    a, b, c = images
    await cache.acquire(*a, no_progress)  # held: a distribution is using it
    await cache.acquire(*b, no_progress)
    cache.release(b[1])
    os.utime(cache.folder / f"{b[1]}.sha256", (1, 1))  # b: used long ago
    await cache.acquire(*c, no_progress)
    assert raw_cache.entries(cache.folder) == sorted([a[1], c[1]])
    # a, released and now the oldest, goes when another image comes.
    cache.release(a[1])
    os.utime(cache.folder / f"{a[1]}.sha256", (2, 2))
    await cache.acquire(*b, no_progress)
    assert raw_cache.entries(cache.folder) == sorted([b[1], c[1]])


async def test_deleting_or_replacing_an_environment_drops_its_raw_copy(
        api: tuple[httpx.AsyncClient, Ports, SwitchInfo, Path], tmp_path: Path) -> None:
    client, _, _, env_dir = api
    config = agent_config(tmp_path)
    cache = RawCache(config.raw_cache_dir, 10 << 30)
    keys = []
    for name in ("one", "two"):
        image, key = write_image(env_dir, seventy_percent_zeros(4, seed=len(name) + ord(name[0])), "gz", name)
        body = {"name": name, "image": image.name, "size": 0, "sector_start": 8192, "ssh_user": "pi"}
        r = await client.post("/api/admin/environments", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        await cache.acquire(image, key, no_progress)
        keys.append(key)
    assert raw_cache.entries(cache.folder) == sorted(keys)
    # "one" gets a new image: the old copy goes, "two"'s stays.
    new, new_key = write_image(env_dir, seventy_percent_zeros(4, seed=99), "gz", "one-v2")
    body = {"name": "one", "image": new.name, "size": 0, "sector_start": 8192, "ssh_user": "pi"}
    r = await client.put("/api/admin/environments/one", json=body, headers=ADMIN)
    assert r.status_code == 200 and r.json()["checksum"] == new_key, r.text
    assert raw_cache.entries(cache.folder) == [keys[1]]
    assert (await client.delete("/api/admin/environments/two", headers=ADMIN)).status_code == 200
    assert raw_cache.entries(cache.folder) == []
    assert json.loads((await client.get("/api/admin/environments", headers=ADMIN)).text)[0]["name"] == "one"


async def test_a_chained_compressed_image_gets_its_decompression_in_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.raspberry_helpers import Ctx, sessions_for
    from piseduce.agent.drivers.base import NodeView
    from piseduce.agent.drivers.raspberry import card, distribution
    from piseduce.agent.drivers.raspberry.driver import RaspberryDriver
    from piseduce.agent.models import Environment
    from piseduce.db import write_session

    config = agent_config(tmp_path, timeout_scale=1.0)
    sessions = sessions_for(config)
    driver = RaspberryDriver(config, sessions)
    write = {s.name: s for s in driver.processes()["deploy"].steps}["write_image"].budget
    assert write is not None
    image, key = write_image(config.env_dir, seventy_percent_zeros(4), "gz", "saved")
    gib16 = 16 << 30
    with write_session(sessions) as s:
        s.merge(Environment(name="saved", image=image.name, size=gib16, ssh_user="pi", checksum=key))
    ctx = Ctx(config, NodeView(name="pi-1"), {"environment": "saved"})
    try:
        alone = write(ctx)  # one board: the board decompresses as it writes, nothing added
        assert alone == card.write_seconds(gib16)
        monkeypatch.setattr(distribution.Distributor, "expected", lambda self, c, e: 3)
        chained = write(ctx)
        chain = distribution.chain_budget(card.stall_seconds(), driver.ops.boot_wait)
        # Not cached yet: 16 GiB decompressed at 20 MB/s (859 s) before the chain starts.
        assert chained == pytest.approx(alone + chain + gib16 / (20 * 1_000_000))
        # Cached: the raw copy's size, nothing to decompress.
        cache = RawCache(config.raw_cache_dir, 10 << 30)
        entry, _ = await cache.acquire(image, key, no_progress)
        assert write(ctx) == pytest.approx(card.write_seconds(entry.size) + chain)
    finally:
        await driver.close()


async def test_a_cache_that_cannot_be_written_is_unavailable_not_a_corrupt_image(tmp_path: Path) -> None:
    image, key = write_image(tmp_path / "env", seventy_percent_zeros(4), "gz")
    (tmp_path / "cache").write_text("a file where the folder should be")
    cache = RawCache(tmp_path / "cache", 10 << 30)
    with pytest.raises(raw_cache.CacheUnavailable, match="cannot write the raw cache in .*cache/raw"):
        await cache.acquire(image, key, no_progress)
    assert not cache.in_use and not cache._building
