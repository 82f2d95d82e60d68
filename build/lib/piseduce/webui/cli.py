"""`piseduce webui ...`: gen-key, init-db, serve, create-admin."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from piseduce import crypto
from piseduce.config import WebuiConfig, load_webui_config

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(no_args_is_help=True, add_completion=False, help="The PiSeduce web UI.")

ConfigArg = typer.Argument(..., help="config_webui.json", exists=False)


def _migrate(cfg: WebuiConfig) -> None:
    from piseduce.db import upgrade

    upgrade("webui", cfg.database_url)


def _first_admin(cfg: WebuiConfig) -> None:
    """On a database without an admin, create one; its password goes to a file only its account
    may read (mode 0600), never to the terminal: under systemd the terminal is the journal."""
    from piseduce.db import make_engine, session_factory
    from piseduce.private_files import replace_private
    from piseduce.webui.auth import ensure_first_admin

    engine = make_engine(cfg.database_url)
    try:
        new = ensure_first_admin(session_factory(engine))
    finally:
        engine.dispose()
    if new is None:
        return
    path = cfg.first_admin_path
    replace_private(path, f"{new.password}\n".encode())
    typer.echo(f"First start: an admin account {new.email} was created; its password is in {path}")
    typer.echo("(mode 0600: readable by this account only). Log in, change the password in Settings, then")
    typer.echo(f"delete the file. Or set a password of your own: piseduce webui create-admin {cfg.path} "
               "--email you@example.org")


@app.command("gen-key")
def gen_key(config: Path = ConfigArg) -> None:
    """Write the Fernet key file named by key_file (never overwrites an existing one)."""
    cfg = load_webui_config(config)
    if crypto.generate_key_file(cfg.key_path):
        typer.echo(
            f"key file written: {cfg.key_path} (copy it to the key_file of your g5k and iot-lab agents)"
        )
    else:
        typer.echo(f"key file {cfg.key_path} exists already: left unchanged")


@app.command("init-db")
def init_db(config: Path = ConfigArg) -> None:
    """Create or upgrade the database (idempotent); creates the first admin on an empty one."""
    cfg = load_webui_config(config)
    _migrate(cfg)
    typer.echo(f"database ready: {cfg.database_url}")
    _first_admin(cfg)


@app.command("serve")
def serve(
    config: Path = ConfigArg,
    log_level: str = typer.Option("info", help="uvicorn log level"),
    log_format: str = typer.Option("text", help="Log lines as text or json"),
    workers: int | None = typer.Option(
        None, "--workers", min=1, max=64, help="Worker processes (default: the config's workers, 1)"
    ),
) -> None:
    """Run the web UI on host:port_number (migrates the database first)."""
    import uvicorn

    from piseduce.logs import configure
    from piseduce.webui import worker
    from piseduce.webui.app import create_app

    if log_format not in ("text", "json"):
        typer.echo("error: --log-format must be text or json", err=True)
        raise typer.Exit(2)
    configure(level=log_level, fmt=log_format)
    cfg = load_webui_config(config)
    count = cfg.workers if workers is None else workers
    _migrate(cfg)
    _first_admin(cfg)
    # uvicorn's own proxy_headers stays off: the web UI reads X-Forwarded-For itself, only from
    # the trusted_proxies of its config (webui/client_addr.py).
    options = {"host": cfg.host, "port": cfg.port_number, "log_level": log_level, "proxy_headers": False,
               "log_config": None}
    if count == 1:
        web = create_app(cfg)
        worker.tune_process()
        _announce(cfg, count)
        uvicorn.run(web, **options)  # type: ignore[arg-type]
        return
    # Checked here, once, so that a bad key file is one line, not one traceback per worker; the
    # session secret is created before the workers start (they all read the same one).
    _check_key(cfg)
    crypto.generate_secret_file(cfg.secret_path)
    os.environ[worker.CONFIG_ENV] = str(cfg.path)
    os.environ[worker.LOG_LEVEL_ENV] = log_level
    os.environ[worker.LOG_FORMAT_ENV] = log_format
    _announce(cfg, count)
    uvicorn.run("piseduce.webui.worker:app", factory=True, workers=count, **options)  # type: ignore[arg-type]


def _check_key(cfg: WebuiConfig) -> None:
    from piseduce.config import ConfigError

    try:
        crypto.load_fernet(cfg.key_path)
    except crypto.KeyFileError as exc:
        raise ConfigError(
            f"{cfg.path}: key 'key_file': {exc}; create it with 'piseduce webui gen-key {cfg.path}'"
        ) from None


def _announce(cfg: WebuiConfig, count: int) -> None:
    workers = f" ({count} workers)" if count > 1 else ""
    typer.echo(f"PiSeduce web UI on http://{cfg.host}:{cfg.port_number}/{workers}", err=False)
    sys.stdout.flush()


@app.command("create-admin")
def create_admin(
    config: Path = ConfigArg, email: str = typer.Option(..., "--email", help="the admin's email")
) -> None:
    """Create an admin (or reset one). The password is read from stdin or prompted, never an argument."""
    from piseduce.db import make_engine, session_factory
    from piseduce.webui.auth import check_email, check_new_password, normalise_email, set_admin

    cfg = load_webui_config(config)
    email = normalise_email(email)
    problem = check_email(email)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        confirm = getpass.getpass("Password again: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
        confirm = password
    problem = check_new_password(password, confirm)
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    _migrate(cfg)
    engine = make_engine(cfg.database_url)
    try:
        created = set_admin(session_factory(engine), email, password)
    finally:
        engine.dispose()
    typer.echo(f"admin {email} {'created' if created else 'updated'}")


def _audit_smtp_password(s: Session, had: bool, password: str) -> None:
    """The audit event of the command (no web request: the actor is the command and the OS
    account that ran it, the source this machine)."""
    from piseduce.webui import audit
    from piseduce.webui.notify import audited

    detail = audited.smtp_password_change(had, password)
    if detail is not None:
        actor = audit.Who(None, f"piseduce webui smtp-password ({getpass.getuser()})", "local")
        audit.record(s, actor, "notify.smtp_password", ("setting", "smtp_password"), detail)


@app.command("smtp-password")
def smtp_password(config: Path = ConfigArg) -> None:
    """Set the mail server's password (read from stdin or prompted, never an argument); kept
    encrypted with the key file in the web UI's database. An empty line removes it."""
    from piseduce.db import make_engine, session_factory, write_session
    from piseduce.webui.notify.store import set_smtp_password, smtp_password

    cfg = load_webui_config(config)
    try:
        fernet = crypto.load_fernet(cfg.key_path)
    except crypto.KeyFileError as exc:
        typer.echo(f"error: {exc}; create it with 'piseduce webui gen-key {config}'", err=True)
        raise typer.Exit(2) from None
    if sys.stdin.isatty():
        password = getpass.getpass("SMTP password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    _migrate(cfg)
    engine = make_engine(cfg.database_url)
    try:
        with write_session(session_factory(engine)) as s:
            had = bool(smtp_password(s, fernet))
            set_smtp_password(s, fernet, password)
            _audit_smtp_password(s, had, password)
    finally:
        engine.dispose()
    typer.echo("SMTP password stored (encrypted with the key file)" if password else "SMTP password removed")
