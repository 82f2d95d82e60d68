"""`piseduce agent init-db|api|exec CONFIG`: the seed's three steps (init_database.py, agent_api.py,
agent_exec.py). A bad config file ends the command with one line (`piseduce.cli.main` prints the
ConfigError)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from piseduce.config import AgentConfig, ConfigError, load_agent_config

app = typer.Typer(no_args_is_help=True, add_completion=False)

ConfigArg = Annotated[Path, typer.Argument(help="The agent's config_agent.json", show_default=False)]


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


FormatOption = Annotated[LogFormat, typer.Option(help="Log lines as text or JSON")]
# DEBUG shows the executor's line per event (engine/journal.py), off by default: a thousand nodes
# deploying write thousands a second.
LevelOption = Annotated[LogLevel, typer.Option(help="The lowest level of the lines logged")]


def _setup(
    config: Path, log_format: LogFormat = LogFormat.text, log_level: LogLevel = LogLevel.info
) -> AgentConfig:
    from piseduce.logs import configure

    # Logging first: unknown keys of the config are reported as warnings.
    configure(level=log_level.value, fmt=log_format.value)
    return load_agent_config(config)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(database)"


def _current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.exc import SQLAlchemyError

    from piseduce.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot open the database {_safe_url(url)} (key 'db_url'): {exc.__class__.__name__}"
        ) from None
    finally:
        engine.dispose()


@app.command("init-db")
def init_db(config: ConfigArg) -> None:
    """Create or upgrade the agent's database (idempotent)."""
    from piseduce import db

    cfg = _setup(config)
    # Alembic's INFO lines would drown the one line this command prints.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    url = cfg.database_url
    before = _current_revision(url)
    head = db.upgrade("agent", url)
    where = _safe_url(url)
    if before == head:
        typer.echo(f"{where}: already up to date (revision {head})")
    elif before is None:
        typer.echo(f"{where}: tables created (revision {head})")
    else:
        typer.echo(f"{where}: upgraded from revision {before} to {head}")
    _seal_secrets(cfg)


def _seal_secrets(cfg: AgentConfig) -> None:
    """The key file (a raspberry agent makes its own), and the deploy forms' secrets that an older
    version stored in clear: sealed, or erased for reservations that have ended."""
    from piseduce.agent.drivers import driver_class
    from piseduce.agent.sealed import agent_key, seal_stored
    from piseduce.crypto import KeyFileError
    from piseduce.db import make_engine, session_factory, write_session

    try:
        needs_web_key = driver_class(cfg).needs_credentials
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        key = "driver" if cfg.driver else "node_type"
        raise ConfigError(f"{cfg.path}: key {key!r}: cannot load the driver ({exc})") from None
    try:
        fernet = agent_key(cfg, create=not needs_web_key)
    except KeyFileError as exc:
        raise ConfigError(f"{cfg.path}: key 'key_file': {exc}") from None
    engine = make_engine(cfg.database_url)
    try:
        with write_session(session_factory(engine)) as s:
            sealed, erased = seal_stored(s, fernet)
    finally:
        engine.dispose()
    if sealed or erased:
        typer.echo(f"deploy form secrets stored in clear: {sealed} sealed with the key file, {erased} erased")


def _check_database(cfg: AgentConfig) -> None:
    from piseduce.db import has_tables, make_engine

    engine = make_engine(cfg.database_url)
    try:
        ready = has_tables(engine, "nodes", "reservations", "actions")
    finally:
        engine.dispose()
    if not ready:
        raise ConfigError(
            f"{cfg.path}: the database of 'db_url' ({_safe_url(cfg.database_url)}) has no tables; "
            f"run 'piseduce agent init-db {cfg.path}' first"
        )


@app.command("api")
def api(
    config: ConfigArg,
    workers: Annotated[int, typer.Option(min=1, max=64, help="API worker processes")] = 1,
    log_format: FormatOption = LogFormat.text,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Serve the agent API on the config's host and port_number."""
    import uvicorn

    from piseduce.agent.app import CONFIG_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV, create_app

    cfg = _setup(config, log_format, log_level)
    _check_database(cfg)
    common = {"host": cfg.host, "port": cfg.port_number, "log_config": None, "access_log": False}
    if workers > 1:
        # Each worker process builds its own app (and database engine) from the config path.
        os.environ[CONFIG_ENV] = str(cfg.path)
        os.environ[LOG_LEVEL_ENV] = log_level.value
        os.environ[LOG_FORMAT_ENV] = log_format.value
        uvicorn.run("piseduce.agent.app:app_from_env", factory=True, workers=workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(cfg), **common)  # type: ignore[arg-type]


def _run_loop(
    config: Path, log_format: LogFormat, log_level: LogLevel, run: Callable[[AgentConfig], Awaitable[None]]
) -> None:
    """The executor, the monitor and the gateway: the config, the database's revision, then their
    loop until Ctrl-C (each module imported by its command only: the others need none of it)."""
    cfg = _setup(config, log_format, log_level)
    _check_database(cfg)

    async def main() -> None:
        await run(cfg)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@app.command("exec")
def exec_(
    config: ConfigArg,
    log_format: FormatOption = LogFormat.text,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Run the executor: deployments, actions and expiries (the durable state machine)."""
    from piseduce.agent.engine.executor import run_executor

    _run_loop(config, log_format, log_level, run_executor)


@app.command("monitor")
def monitor(
    config: ConfigArg,
    log_format: FormatOption = LogFormat.text,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Sample the nodes' power and temperature every monitor_period_seconds (kept monitor_retention_days)."""
    from piseduce.agent.monitor import run_monitor

    _run_loop(config, log_format, log_level, run_monitor)


@app.command("gateway")
def gateway(
    config: ConfigArg,
    log_format: FormatOption = LogFormat.text,
    log_level: LevelOption = LogLevel.info,
) -> None:
    """Run the SSH gateway: users jump to the boards they hold (ssh -J), on gateway_port."""
    from piseduce.agent.gateway import run_gateway

    _run_loop(config, log_format, log_level, run_gateway)


@app.command("network-config")
def network_config(
    config: ConfigArg,
    output: Annotated[Path | None, typer.Option(help="Write the dnsmasq file here (default: print it)")] = (
        None
    ),
    exports: Annotated[Path | None, typer.Option(help="Write the NFS export line here too")] = None,
) -> None:
    """The dnsmasq configuration of the boards' network (one static lease per node) and its NFS export."""
    from piseduce.agent.drivers.raspberry.netconfig import NetworkConfigError, network_files
    from piseduce.cli_files import replace_text, writable_file
    from piseduce.db import make_engine, session_factory

    cfg = _setup(config)
    if cfg.node_type != "raspberry":
        raise ConfigError(f"{cfg.path}: key 'node_type': network-config is for a raspberry agent")
    _check_database(cfg)
    # Both files can be written, checked before either is.
    for path, option in ((output, "--output"), (exports, "--exports")):
        if path is not None:
            writable_file(path, option)
    engine = make_engine(cfg.database_url)
    try:
        with session_factory(engine)() as s:
            files = network_files(cfg, s)
    except NetworkConfigError as exc:
        raise ConfigError(f"{cfg.path}: {exc}") from None
    finally:
        engine.dispose()
    for why in files.skipped:
        typer.echo(f"warning: no lease for {why}", err=True)
    if exports is not None:
        replace_text(exports, files.exports, "--exports")
    if output is None:
        typer.echo(files.dnsmasq, nl=False)
    else:
        replace_text(output, files.dnsmasq, "--output")
        typer.echo(f"{output}: {len(files.leases)} static lease(s)", err=True)
