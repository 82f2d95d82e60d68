"""The agent's HTTP API (DESIGN §5.1): `create_app(config)` builds it; `piseduce agent api` serves it.

With several uvicorn workers each process imports `app_from_env`, which reads the config path
from `PISEDUCE_AGENT_CONFIG`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import piseduce
from piseduce.agent.api import admin, health, monitoring, nodes, reservations
from piseduce.agent.api.deps import ERRORS, AgentState
from piseduce.agent.auth import admin as require_admin
from piseduce.agent.drivers import load_driver
from piseduce.agent.drivers.base import Driver
from piseduce.agent.inventory import Inventory
from piseduce.agent.models import NODE_STATUSES, RESERVATION_STATUSES, Node, Reservation
from piseduce.agent.scheduling import Limits
from piseduce.config import AgentConfig, ConfigError, load_agent_config
from piseduce.crypto import KeyFileError, load_fernet
from piseduce.db import make_engine, session_factory

log = logging.getLogger(__name__)

CONFIG_ENV = "PISEDUCE_AGENT_CONFIG"
MAX_BODY_BYTES = 1 << 20


class ReservationCollector(Collector):
    """Gauges read from the database at scrape time (so every worker reports the same numbers)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterable[GaugeMetricFamily]:
        res = GaugeMetricFamily("piseduce_agent_reservations", "Reservations by status", labels=["status"])
        nodes = GaugeMetricFamily("piseduce_agent_nodes", "Present nodes by status", labels=["status"])
        try:
            with self.sessions() as s:
                by_status = dict(
                    s.execute(select(Reservation.status, func.count()).group_by(Reservation.status)).all()
                )
                by_node = dict(
                    s.execute(
                        select(Node.status, func.count()).where(Node.present.is_(True)).group_by(Node.status)
                    ).all()
                )
        except OperationalError:
            log.warning("metrics: database unavailable", exc_info=True)
            return []
        for st in RESERVATION_STATUSES:
            res.add_metric([st], by_status.get(st, 0))
        for st in NODE_STATUSES:
            nodes.add_metric([st], by_node.get(st, 0))
        return [res, nodes]


class Guard:
    """Pure ASGI middleware: request counts and latency per route, and a cap on body size."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "piseduce_agent_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "piseduce_agent_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > MAX_BODY_BYTES
                except ValueError:
                    too_big = True
                if too_big:
                    resp = JSONResponse(
                        {"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
                    )
                    await resp(scope, receive, send)
                    return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            self.requests.labels(method, path, str(status)).inc()
            self.latency.labels(method, path).observe(time.perf_counter() - t0)


def _load_driver(config: AgentConfig, sessions: sessionmaker[Session]) -> Driver:
    try:
        return load_driver(config, sessions)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        key = "driver" if config.driver else "node_type"
        target = config.driver or config.node_type
        raise ConfigError(
            f"{config.path}: key {key!r}: cannot load the driver of {target!r} ({exc})"
        ) from None


def create_app(config: AgentConfig, driver: Driver | None = None) -> FastAPI:
    engine = make_engine(config.database_url)
    sessions = session_factory(engine)
    driver = driver or _load_driver(config, sessions)
    fernet = None
    if driver.needs_credentials or config.key_path.is_file():
        try:
            fernet = load_fernet(config.key_path)
        except KeyFileError as exc:
            raise ConfigError(f"{config.path}: key 'key_file': {exc}") from None
    state = AgentState(
        config=config,
        driver=driver,
        engine=engine,
        sessions=sessions,
        fernet=fernet,
        inventory=Inventory(driver, sessions, config.inventory_refresh_seconds),
        limits=Limits.from_config(config),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        try:
            await driver.close()
        finally:
            engine.dispose()

    app = FastAPI(
        title=f"PiSeduce agent ({config.node_type})",
        version=piseduce.__version__,
        description='Reservations and deployments of one testbed site. Every error is JSON {"detail": ...}.',
        lifespan=lifespan,
    )
    app.state.agent = state
    registry = CollectorRegistry()
    registry.register(ReservationCollector(sessions))
    registry.register(monitoring.MonitoringCollector(state))
    app.state.registry = registry

    for router in (health.router, nodes.router, reservations.router, admin.router, monitoring.router):
        app.include_router(router, responses=ERRORS)
    extra = driver.admin_router()
    if extra is not None:
        app.include_router(
            extra, prefix="/api/admin", dependencies=[Depends(require_admin)], responses=ERRORS
        )
    user_extra = driver.user_router()
    if user_extra is not None:
        app.include_router(user_extra, prefix="/api/reservations", responses=ERRORS)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        # Starlette names only the first matching route's methods; list those of every route
        # of this path (GET and POST /api/reservations are two routes).
        allowed: set[str] = set()
        for route in app.router.routes:
            match, _ = route.matches({**request.scope, "method": "\0"})
            if match != Match.NONE:
                allowed |= set(getattr(route, "methods", None) or ())
        return JSONResponse(
            {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(sorted(allowed))}
        )

    @app.exception_handler(OperationalError)
    async def db_busy(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc.orig)
        return JSONResponse(
            {"detail": "the agent's database is busy or unavailable; try again"}, status_code=503
        )

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse({"detail": "internal error of the agent (see its log)"}, status_code=500)

    app.add_middleware(Guard, registry=registry)
    return app


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory` with several workers."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"{CONFIG_ENV} is not set: it must name the agent's config file")
    return create_app(load_agent_config(path))
