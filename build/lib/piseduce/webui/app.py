"""The web UI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from piseduce import crypto
from piseduce.body_limit import BodyLimit
from piseduce.config import ConfigError, WebuiConfig
from piseduce.db import make_engine, session_factory
from piseduce.dbtypes import utcnow
from piseduce.webui import audit, auth, throttle
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.api.app import PREFIX as API_PREFIX
from piseduce.webui.api.app import create_api
from piseduce.webui.chores import ChoresLeader, lead, lock_path
from piseduce.webui.client_addr import ClientAddress
from piseduce.webui.database import Database, LoopGuard, install_loop_guard
from piseduce.webui.notify.notifier import Notifier
from piseduce.webui.routes import (
    accounts,
    admin,
    admin_audit,
    admin_environments,
    admin_nodes,
    admin_switches,
    calendar_feed,
    configure,
    env_factory,
    manage,
    monitoring,
    reserve,
    reserve_slot,
    settings,
    settings_notify,
    settings_tokens,
)
from piseduce.webui.sessions import ServerSessions, purge_expired
from piseduce.webui.web import STATIC, make_templates, redirect, render

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 600
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


# Request bodies are capped while they stream in (piseduce.body_limit), before the session or the
# form is read: 1 MiB for a form, 64 KiB for the forms anyone may send (login, sign-up), and the
# deploy form, which carries firmware files of up to 4 MiB each (MAX_UPLOAD), 16 MiB in all.
MAX_FORM_BYTES = 1 << 20
MAX_DEPLOY_FORM_BYTES = 16 << 20
BODY_RULES = (
    (r"/(login|signup)", 64 << 10),
    (r"/configure/deploy", MAX_DEPLOY_FORM_BYTES),
    (r"/api/v1/reservations/[^/]+/[0-9]+/deploy", MAX_DEPLOY_FORM_BYTES),  # firmware, base64
)


class _TooLarge(Response):
    """The 413 of a body over its route's limit: words for a page, `{"detail": …}` for the API
    (which path it is, the response learns when it is sent)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413)
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {"Connection": "close", "X-Content-Type-Options": "nosniff"}
        kib = self.limit // 1024
        answer: Response
        if str(scope.get("path", "")).startswith(API_PREFIX + "/"):
            words = f"The request is larger than {kib} KiB, the limit of this route: send less."
            answer = JSONResponse({"detail": words}, 413, headers=headers)
        else:
            answer = PlainTextResponse(
                f"Request refused: it is larger than {kib} KiB, the limit of this page. "
                "Go back and send less (deploy form files: at most 4 MiB each).", 413, headers=headers)
        await answer(scope, receive, send)


def _too_large(limit: int) -> Response:
    return _TooLarge(limit)


async def _csrf_guard(request: Request) -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        await auth.check_csrf(request)


def _housekeeping(s: Session, audit_days: int) -> None:
    now = utcnow()
    purge_expired(s, now)
    throttle.purge(s, now)
    audit.purge(s, now, audit_days)


async def _housekeeping_loop(database: Database, audit_days: int) -> None:
    """Forget expired sessions, idle limiter counters and audit events past their retention."""
    while True:
        try:
            await database.write(lambda s: _housekeeping(s, audit_days))
        except Exception:  # a locked or unreachable database: next time
            log.exception("web UI housekeeping failed")
        await asyncio.sleep(HOUSEKEEPING_SECONDS)


async def _security_headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.url.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "public, max-age=3600")
    else:
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _login_required(request: Request, _exc: Exception) -> Response:
    return redirect(request, "/login")


async def _admin_required(request: Request, _exc: Exception) -> Response:
    words = {"title": "Admins only", "message": "This page is for administrators."}
    return render(request, "error.html", words, status=403)


async def _csrf_failed(request: Request, _exc: Exception) -> Response:
    message = ("The form was out of date or did not come from this site (CSRF check failed). Reload the page "
               "and try again.")
    return render(request, "error.html", {"title": "Request refused", "message": message}, status=403)


def _routes(app: FastAPI) -> None:
    """The pages, their static files, and the users' API."""
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for module in (accounts, calendar_feed, reserve, reserve_slot, configure, manage, settings, admin,
                   admin_nodes, admin_switches, admin_environments, monitoring, env_factory, settings_tokens,
                   admin_audit, settings_notify):
        app.include_router(module.router)
    # The users' API: its own app (spec, docs, JSON errors, token or session+CSRF-header auth).
    app.mount(API_PREFIX, create_api(app.state))


def create_app(
    cfg: WebuiConfig, *, health_checks: bool = True, loop_guard: LoopGuard | None = None,
    notifications: bool | None = None,
) -> FastAPI:
    """The web UI for this configuration. The database must be migrated (`piseduce webui init-db`).
    `loop_guard` overrides the config's `event_loop_db_check` (the tests raise)."""
    try:
        fernet = crypto.load_fernet(cfg.key_path)
    except crypto.KeyFileError as exc:
        raise ConfigError(
            f"{cfg.path}: key 'key_file': {exc}; create it with 'piseduce webui gen-key {cfg.path}'"
        ) from None
    secret = crypto.generate_secret_file(cfg.secret_path)
    engine = make_engine(cfg.database_url)
    install_loop_guard(engine, loop_guard or cfg.event_loop_db_check)
    database = Database(session_factory(engine))
    hub = AgentClient(cfg, database, fernet)

    leader = ChoresLeader(lock_path(cfg.secret_path.parent, cfg.database_url))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        chores: list[asyncio.Task[None]] = []

        async def start_chores() -> None:
            # Once per web UI, not once per worker (chores.py).
            if health_checks:
                hub.start()
            chores.append(loop.create_task(_housekeeping_loop(database, cfg.audit_retention_days)))
            # The notifier asks the agents too: off with the health checks unless asked for.
            if health_checks if notifications is None else notifications:
                chores.append(loop.create_task(Notifier(cfg, database, hub, fernet).run_forever()))

        leading = loop.create_task(lead(leader, start_chores, cfg.health_check_seconds))
        try:
            yield
        finally:
            for task in (*chores, leading):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await hub.close()
            await asyncio.to_thread(database.close)
            await asyncio.to_thread(engine.dispose)

    app = FastAPI(
        title="PiSeduce web UI",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(_csrf_guard)],
    )
    app.state.cfg, app.state.database, app.state.engine = cfg, database, engine
    app.state.fernet, app.state.hub, app.state.secret = fernet, hub, secret
    app.state.secure_cookies = cfg.cookies_secure
    app.state.templates = make_templates()
    app.state.client_addr = ClientAddress(cfg.proxy_headers, cfg.trusted_proxies)
    rules = throttle.default_rules(
        cfg.login_free_failures, cfg.login_source_free_failures, cfg.login_account_free_failures
    )
    app.state.limiter = throttle.Limiter(rules)

    app.middleware("http")(_security_headers)
    # Added after the headers, so it wraps them: the session is there for every handler.
    app.add_middleware(ServerSessions, db=database, secure=cfg.cookies_secure)
    # Added last, so it is the outermost: nothing reads a body before the cap applies.
    app.add_middleware(BodyLimit, default=MAX_FORM_BYTES, rules=BODY_RULES, too_large=_too_large)
    app.add_exception_handler(auth.LoginRequired, _login_required)
    app.add_exception_handler(auth.AdminRequired, _admin_required)
    app.add_exception_handler(auth.CsrfError, _csrf_failed)

    _routes(app)
    _favicon_and_health(app)
    return app


def _favicon_and_health(app: FastAPI) -> None:
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        # Browsers ask for it on every page, whatever the page links to.
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        # On the event loop, touching nothing: it answers whatever the database or the threads do.
        return {"status": "ok"}
