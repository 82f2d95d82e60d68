"""What the agent's long-running processes (executor, monitor) share: open the database, check
it was initialised, load the driver, stop cleanly on SIGTERM/SIGINT, release everything."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from sqlalchemy.orm import Session, sessionmaker

from piseduce import logs
from piseduce.agent.drivers import load_driver
from piseduce.agent.drivers.base import Driver
from piseduce.config import AgentConfig, ConfigError
from piseduce.db import has_tables, make_engine, session_factory

Body = Callable[[sessionmaker[Session], Driver, asyncio.Event], Awaitable[None]]


async def run_daemon(
    config: AgentConfig, body: Body, *, tables: tuple[str, ...], stop: asyncio.Event | None = None
) -> None:
    if not logging.getLogger().handlers:
        logs.configure()
    engine = make_engine(config.database_url)
    try:
        if not has_tables(engine, *tables):
            raise ConfigError(
                f"{config.path}: the database has no agent tables; "
                f"run 'piseduce agent init-db {config.path}' first"
            )
        sessions = session_factory(engine)
        driver = load_driver(config, sessions)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: the caller stops us through `stop`
        try:
            await body(sessions, driver, stop)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await driver.close()
    finally:
        engine.dispose()
