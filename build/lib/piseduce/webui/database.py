"""The web UI's only way to its database: short transactions in threads, never on the event loop.

A SQLite write lock held by another process (an `init-db`, a backup, a second web UI worker), or a
slow PostgreSQL, makes a database call wait; on the event loop that wait would stop every request,
`/healthz` included. So every route, dependency and background task hands a plain function of a
`Session` to `Database.read` or `Database.write`, which run it in a thread pool of their own:
reads never queue behind writes waiting for the lock, and neither takes the threads the server
uses for anything else. Each call is one transaction, ended on every path by a context manager
(committed when the function returns, rolled back when it raises), so no error path can keep a
lock.

`install_loop_guard` watches the engine: a statement executed on a thread that runs an event loop
is logged (or raised, in the tests), so a regression cannot hide.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from piseduce.db import write_session

log = logging.getLogger(__name__)
T = TypeVar("T")
LoopGuard = Literal["off", "warn", "raise"]


class DbOnEventLoop(RuntimeError):
    """A database statement was executed on the event loop's thread."""


class Database:
    """Runs functions of a `Session` in threads: `read` in a read-only transaction, `write` in a
    write transaction (BEGIN IMMEDIATE on SQLite: serialised with every other writer)."""

    def __init__(
        self, factory: sessionmaker[Session], *, readers: int = 4, writers: int | None = None
    ) -> None:
        self.factory = factory
        bind = factory.kw.get("bind")
        sqlite = bind is None or bind.dialect.name == "sqlite"
        # SQLite has one writer at a time anyway: two threads keep a second write ready.
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="webui-db-read")
        self._writers = ThreadPoolExecutor(
            max_workers=writers or (2 if sqlite else 8), thread_name_prefix="webui-db-write"
        )

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._read, fn)

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writers, self._write, fn)

    def _read(self, fn: Callable[[Session], T]) -> T:
        # Closing the session ends its transaction (the connection goes back to the pool rolled
        # back) and detaches what was read, attributes loaded: the caller uses them as they are.
        with self.factory() as session:
            return fn(session)

    def _write(self, fn: Callable[[Session], T]) -> T:
        with write_session(self.factory) as session:
            return fn(session)

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._writers.shutdown(wait=True)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def install_loop_guard(engine: Engine, mode: LoopGuard) -> None:
    """Report every statement executed on an event loop's thread (`warn`: a log line with where
    it came from; `raise`: DbOnEventLoop, for the tests)."""
    if mode == "off":
        return

    @event.listens_for(engine, "before_cursor_execute")
    def _guard(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not _on_event_loop():
            return
        where = "".join(traceback.format_stack(limit=8)[:-1])
        if mode == "raise":
            raise DbOnEventLoop(f"database call on the event loop: {statement[:80]}\n{where}")
        log.error("database call on the event loop (it blocks every request): %s\n%s", statement[:80], where)
