"""The web UI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from piseduce import crypto
from piseduce.config import ConfigError, WebuiConfig
from piseduce.db import make_engine, session_factory
from piseduce.webui import auth
from piseduce.webui.agents import AgentHub
from piseduce.webui.routes import (
    accounts,
    admin,
    admin_infra,
    configure,
    env_factory,
    manage,
    monitoring,
    reserve,
    settings,
)
from piseduce.webui.web import STATIC, make_templates, redirect, render

SESSION_MAX_AGE = 12 * 3600
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


async def _csrf_guard(request: Request) -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        await auth.check_csrf(request)


def create_app(cfg: WebuiConfig, *, health_checks: bool = True) -> FastAPI:
    """The web UI for this configuration. The database must be migrated (`piseduce webui init-db`)."""
    try:
        fernet = crypto.load_fernet(cfg.key_path)
    except crypto.KeyFileError as exc:
        raise ConfigError(
            f"{cfg.path}: key 'key_file': {exc}; create it with 'piseduce webui gen-key {cfg.path}'"
        ) from None
    secret = crypto.generate_secret_file(cfg.secret_path)
    engine = make_engine(cfg.database_url)
    factory = session_factory(engine)
    hub = AgentHub(cfg, factory, fernet)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if health_checks:
            hub.start()
        try:
            yield
        finally:
            await hub.close()
            engine.dispose()

    app = FastAPI(
        title="PiSeduce web UI",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(_csrf_guard)],
    )
    app.state.cfg = cfg
    app.state.db = factory
    app.state.engine = engine
    app.state.fernet = fernet
    app.state.hub = hub
    app.state.templates = make_templates()
    app.state.limiter = auth.RateLimiter(cfg.login_attempts_per_minute)

    @app.middleware("http")
    async def security_headers(
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

    # Added last, so it wraps everything: the session is there for the handlers above.
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="piseduce_session",
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=False,
    )

    @app.exception_handler(auth.LoginRequired)
    async def _login_required(request: Request, _exc: auth.LoginRequired) -> Response:
        return redirect(request, "/login")

    @app.exception_handler(auth.AdminRequired)
    async def _admin_required(request: Request, _exc: auth.AdminRequired) -> Response:
        return render(
            request,
            "error.html",
            {"title": "Admins only", "message": "This page is for administrators."},
            status=403,
        )

    @app.exception_handler(auth.CsrfError)
    async def _csrf_failed(request: Request, _exc: auth.CsrfError) -> Response:
        return render(
            request,
            "error.html",
            {
                "title": "Request refused",
                "message": "The form was out of date or did not come from this site (CSRF check failed). "
                "Reload the page and try again.",
            },
            status=403,
        )

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for module in (accounts, reserve, configure, manage, settings, admin):
        app.include_router(module.router)
    app.include_router(admin_infra.router)
    app.include_router(monitoring.router)
    app.include_router(env_factory.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
