"""The web UI's background chores (the agent health checker, the housekeeping), run by one worker.

With several web UI workers (`workers` in config_webui.json), each process builds the whole app;
the chores must not run once per worker: N health checkers would ask every agent N times per
period and write its status N times. The workers of one web UI take an exclusive, non-blocking
`flock` on a lock file named for the database: the worker holding it runs the chores; the others
try again every period, so when that worker dies (the kernel drops its lock) another one takes
them over. Web UIs on other hosts sharing a PostgreSQL database each run their own checker, which
is harmless: the checks are idempotent writes of the last status seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


def lock_path(folder: Path, database_url: str) -> Path:
    """The lock of the web UI using `database_url` (two web UIs in one folder do not share it)."""
    tag = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return folder / f".webui-chores-{tag}.lock"


class ChoresLeader:
    """Holds the chores lock once taken, until `release` (or the process's end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_take(self) -> bool:
        """Take the lock if no other process holds it (never waits)."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


async def lead(leader: ChoresLeader, start: Callable[[], Awaitable[None]], retry_seconds: float) -> None:
    """Wait to hold the lock, then `start` the chores (once) and hold it until cancelled."""
    try:
        while True:
            try:
                if await asyncio.to_thread(leader.try_take):
                    break
            except OSError as exc:
                # No lock to be had (a read-only folder): chores run twice rather than never.
                log.warning("cannot lock %s (%s): this worker runs the background chores too",
                            leader.path, exc)
                break
            await asyncio.sleep(retry_seconds)
        log.info("web UI worker %d runs the background chores (health checks, housekeeping)", os.getpid())
        await start()
        await asyncio.Event().wait()  # held until the worker stops
    finally:
        with contextlib.suppress(OSError):
            leader.release()
