"""The executor's database calls: short write transactions in a small thread pool, never on the
event loop. One thread on SQLite, where writers are serialised anyway, so that in-process writers
never wait on SQLite's busy handler; eight on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from piseduce.db import write_session

T = TypeVar("T")


class DbPool:
    """Runs short write transactions off the event loop."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        self.sqlite = bind is None or bind.dialect.name == "sqlite"
        self._pool = ThreadPoolExecutor(max_workers=1 if self.sqlite else 8, thread_name_prefix="piseduce-db")

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn)

    def _run(self, fn: Callable[[Session], T]) -> T:
        with write_session(self.sessions) as session:
            return fn(session)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
