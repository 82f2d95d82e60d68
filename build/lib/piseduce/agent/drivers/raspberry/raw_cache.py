"""The agent's raw copies of compressed environments, so that a chain can serve them.

A board of a chain serves its successor what its card holds, so a chain carries a raw image
(distribution.py). A compressed environment (.img.xz, .img.gz, .img.zst, a saved card) is
decompressed here once, on the first chained deployment, into `<raw_cache_path>/raw/<sha>.img`
(`sha`: the compressed file's sha256, the environment's checksum), beside `<sha>.sha256` (the raw
image's sha256, in `sha256sum` format: what the chain's boards verify).

- Sparse: an all-zero 1 MiB block is a hole, so a card saved 70 % empty takes 30 % of its size.
- Crash-safe: written as `<sha>.img.part-<pid>-<random>`, the checksum file written first, the
  image renamed last; an entry is both files. A part whose process is gone is discarded.
- Once: the steps of one distribution (16 boards asking at once) await one build (an in-process
  future), and a file lock orders the agent's processes. A build that fails is remembered for a
  deployment's gathering window (`remember_failure`): a board whose step comes after the failure
  (a loaded host) gets the same error instead of decompressing the corrupt image again.
- Off the event loop: the build runs in a thread, reporting the compressed bytes read.
- Bounded: least recently used entries go once the folder holds more than `raw_cache_max_gb`
  (disk blocks, not sizes), never one a distribution is using; `prune` drops the entries of
  environments that were deleted or replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from piseduce.node.disk import DiskError
from piseduce.node.image import _HashingReader, decompressed, detect_format

log = logging.getLogger(__name__)

MB = 1_000_000
BLOCK = 1 << 20
_ZERO = bytes(BLOCK)
# The slowest agent host decompressing (a Raspberry Pi 4 as pimaster runs `xz -d` at about
# 30 MB/s of output; a loaded x86 host several times that). Budgets add raw size / this.
WORST_CASE_DECOMPRESS_BPS = 20 * MB
_SHA = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^(?P<key>[0-9a-f]{64})\.(img|sha256)\.part-(?P<pid>\d+)(-[0-9a-f]+)?$")


class CacheError(Exception):
    """The image cannot be decompressed (its reason, for the step's error)."""


class BuildStopped(CacheError):
    """Every step that wanted the build was stopped: nothing is wrong with the image."""


class CacheUnavailable(CacheError):
    """The cache cannot be written (full disk, folder not writable): the image itself may be
    fine, so the boards take the direct path instead of failing."""


@dataclass(frozen=True)
class RawEntry:
    path: Path
    sha256: str  # of the raw image
    size: int


@dataclass
class BuildProgress:
    """Written by the build's thread, read by the waiting steps (ints: no lock needed)."""

    read: int = 0
    total: int = 0
    decompressed: bool = False  # False: another process had built it


def decompress_seconds(raw_bytes: int) -> float:
    """What a step's budget adds for decompressing `raw_bytes` at the worst-case agent speed."""
    return max(0, raw_bytes) / WORST_CASE_DECOMPRESS_BPS


def folder_of(base: Path) -> Path:
    return base / "raw"


def _files(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.img", folder / f"{key}.sha256"


def lookup(folder: Path, key: str) -> RawEntry | None:
    """The complete entry of `key`, or None (an image without its checksum file is no entry)."""
    if not _SHA.match(key):
        return None
    img, sidecar = _files(folder, key)
    try:
        raw_sha = sidecar.read_text().split()[0].lower()
        size = img.stat().st_size
    except (OSError, IndexError):
        return None
    if not _SHA.match(raw_sha):
        return None
    return RawEntry(img, raw_sha, size)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard_parts(folder: Path) -> list[str]:
    """Remove what a killed build left: parts whose process is gone, checksum files alone."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _PART.match(p.name)
        dead = m is not None and not _pid_alive(int(m["pid"]))
        alone = p.suffix == ".sha256" and not p.with_suffix(".img").exists()
        if dead or alone:
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def _remove(folder: Path, key: str) -> None:
    img, sidecar = _files(folder, key)
    img.unlink(missing_ok=True)  # the image first: a checksum file alone is no entry
    sidecar.unlink(missing_ok=True)


def entries(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.img") if _SHA.match(p.stem)) if folder.is_dir() else []


def disk_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def evict(folder: Path, cap_bytes: int, keep: Iterable[str] = ()) -> list[str]:
    """Remove least recently used entries (the checksum file's mtime is the last use) until the
    entries take at most `cap_bytes` of disk; entries in `keep` stay whatever their size."""
    kept = set(keep)
    found = []
    for key in entries(folder):
        img, sidecar = _files(folder, key)
        try:
            used = sidecar.stat().st_mtime
        except OSError:
            used = 0.0
        found.append((used, key, disk_bytes(img)))
    total = sum(n for _, _, n in found)
    removed = []
    for _, key, n in sorted(found):
        if total <= cap_bytes:
            break
        if key in kept:
            continue
        _remove(folder, key)
        total -= n
        removed.append(key)
    return removed


def prune(folder: Path, wanted: Iterable[str]) -> list[str]:
    """Remove the entries whose key is no environment's checksum any more (deleted, replaced)."""
    keep = {k.lower() for k in wanted}
    removed = [k for k in entries(folder) if k not in keep]
    for key in removed:
        _remove(folder, key)
    return removed


def build(image: Path, folder: Path, key: str, progress: BuildProgress, stop: threading.Event) -> RawEntry:
    """Decompress `image` into the entry `key` (blocking: run it in a thread)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # a folder made beforehand: private environments' copies are in it
    lock_fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # another process of the agent may be building it
        found = lookup(folder, key)
        if found is not None:
            return found
        return _decompress(image, folder, key, progress, stop)
    finally:
        os.close(lock_fd)


def _decompress(image: Path, folder: Path, key: str, progress: BuildProgress,
                stop: threading.Event) -> RawEntry:
    img, sidecar = _files(folder, key)
    part = folder / f"{key}.img.part-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sha = hashlib.sha256()
        size = 0
        pending = bytearray()

        def emit(block: bytes | bytearray) -> None:
            nonlocal size
            sha.update(block)
            if block != _ZERO[: len(block)]:  # a zero block stays a hole
                os.pwrite(fd, block, size)
            size += len(block)

        progress.decompressed = True
        with image.open("rb") as src:
            progress.total = os.fstat(src.fileno()).st_size
            head = src.read(4096)
            fmt = detect_format(head)
            reader = _HashingReader(src, head)
            try:
                for data in decompressed(reader, fmt):
                    pending += data
                    while len(pending) >= BLOCK:
                        emit(pending[:BLOCK])
                        del pending[:BLOCK]
                    progress.read = reader.count
                    if stop.is_set():
                        raise BuildStopped("stopped: no deployment waits for it any more")
            except DiskError as exc:
                raise CacheError(f"{image.name} cannot be decompressed: {exc}") from None
            if pending:
                emit(pending)
            if size == 0:
                raise CacheError(f"{image.name} holds no image data")
        os.ftruncate(fd, size)  # trailing holes
        os.fsync(fd)
        raw_sha = sha.hexdigest()
        tmp_sidecar = sidecar.with_name(sidecar.name + f".part-{os.getpid()}")
        tmp_sidecar.write_text(f"{raw_sha}  {img.name}\n")
        os.chmod(tmp_sidecar, 0o600)
        os.replace(tmp_sidecar, sidecar)
        os.replace(part, img)  # the commit point: an entry is both files
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return RawEntry(img, raw_sha, size)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


ProgressFn = Callable[[BuildProgress], Awaitable[None]]
# How long a failed build answers for its image: the boards of one deployment reach write_image
# within the distributor's gathering window (distribution.MIN_GATHER_SECONDS at least).
REMEMBER_FAILURE_SECONDS = 30.0
# What identifies the file a failure was met on: a replaced or repaired file is tried again.
Signature = tuple[int, int, int]


def signature(image: Path) -> Signature | None:
    try:
        st = image.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Failure:
    until: float  # time.monotonic()
    image: Signature | None
    reason: str


class RawCache:
    """The executor's view of the cache: one build per key at a time, entries in use kept."""

    def __init__(self, base: Path, cap_bytes: int, report_every: float = 1.0,
                 remember_failure: float = REMEMBER_FAILURE_SECONDS) -> None:
        self.folder = folder_of(base)
        self.cap_bytes = cap_bytes
        self.report_every = report_every
        self.remember_failure = remember_failure
        self._failed: dict[str, Failure] = {}
        self.builds = 0  # decompressions this process ran (the benchmark and tests count them)
        self.in_use: Counter[str] = Counter()
        self._building: dict[str, tuple[asyncio.Future[RawEntry], BuildProgress, threading.Event]] = {}
        self._waiters: Counter[str] = Counter()
        self._swept = False

    async def acquire(self, image: Path, key: str, on_progress: ProgressFn) -> tuple[RawEntry, bool]:
        """The entry of `key` (built from `image` when missing), held until `release(key)`;
        True when this call waited for a build. CacheError when it cannot be built."""
        key = key.lower()
        if not _SHA.match(key):
            raise CacheError(f"the image checksum {key!r} is not a sha256")
        if not self._swept:
            self._swept = True
            await asyncio.to_thread(discard_parts, self.folder)
        self.in_use[key] += 1
        try:
            found = await asyncio.to_thread(self._touch, key)
            if found is not None:
                return found, False
            return await self._await_build(image, key, on_progress), True
        except BaseException:
            self.release(key)
            raise

    def release(self, key: str) -> None:
        key = key.lower()
        self.in_use[key] -= 1
        if self.in_use[key] <= 0:
            del self.in_use[key]

    def _touch(self, key: str) -> RawEntry | None:
        found = lookup(self.folder, key)
        if found is not None:
            with contextlib.suppress(OSError):
                os.utime(_files(self.folder, key)[1])  # its last use, for the LRU cap
        return found

    def _failure(self, key: str, sig: Signature | None) -> str | None:
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() < failed.until and failed.image == sig:
            return failed.reason
        return None

    async def failure_of(self, image: Path, key: str) -> str | None:
        """Why `image` could not be decompressed, when a build failed on this very file within
        `remember_failure`: a board of that deployment left alone (the others already failed)
        fails with it too rather than streaming the corrupt image to its card."""
        key = key.lower()
        if key not in self._failed:
            return None
        return self._failure(key, await asyncio.to_thread(signature, image))

    async def _await_build(self, image: Path, key: str, on_progress: ProgressFn) -> RawEntry:
        sig = await asyncio.to_thread(signature, image)
        # From here to the future's creation nothing awaits: one build per key, or its failure.
        running = self._building.get(key)
        if running is None:
            reason = self._failure(key, sig)
            if reason is not None:
                raise CacheError(reason)
            self._failed.pop(key, None)
            progress, stop = BuildProgress(), threading.Event()
            fut: asyncio.Future[RawEntry] = asyncio.ensure_future(
                self._build(image, key, progress, stop, sig))
            running = (fut, progress, stop)
            self._building[key] = running
        fut, progress, stop = running
        self._waiters[key] += 1
        try:
            while not fut.done():
                # `wait` leaves the build running when this step is cancelled: others wait too.
                await asyncio.wait({fut}, timeout=self.report_every)
                if not fut.done():
                    await on_progress(progress)
            return fut.result()
        finally:
            self._waiters[key] -= 1
            if self._waiters[key] <= 0:
                del self._waiters[key]
                if not fut.done():
                    stop.set()  # every step that wanted it was stopped
                    fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _build(self, image: Path, key: str, progress: BuildProgress, stop: threading.Event,
                     sig: Signature | None) -> RawEntry:
        try:
            entry = await asyncio.to_thread(build, image, self.folder, key, progress, stop)
            self.builds += progress.decompressed
            removed = await asyncio.to_thread(evict, self.folder, self.cap_bytes, set(self.in_use))
            if removed:
                log.info("raw cache: removed %d least recently used entries (cap %d bytes)",
                         len(removed), self.cap_bytes)
            return entry
        except OSError as exc:
            self.builds += progress.decompressed
            why = exc.strerror or str(exc)
            raise CacheUnavailable(f"cannot write the raw cache in {self.folder}: {why}") from None
        except BuildStopped:
            raise  # a new deployment may ask again at once
        except CacheError as exc:
            # The image is bad: its deployment's later boards get this, not a new decompression.
            # Set before `_building` is popped (no await between): no asker sees neither.
            self._failed[key] = Failure(time.monotonic() + self.remember_failure, sig, str(exc))
            raise
        finally:
            self._building.pop(key, None)
