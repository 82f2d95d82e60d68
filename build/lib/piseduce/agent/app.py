"""The agent's HTTP API (DESIGN §5.1): `create_app(config)` builds it; `piseduce agent api` serves it.

With several uvicorn workers each process imports `app_from_env`, which reads the config path
from `PISEDUCE_AGENT_CONFIG`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import piseduce
from piseduce.agent import errors, holds
from piseduce.agent.api import admin, credentials, events, health, monitoring, nodes, reservations, slots
from piseduce.agent.api.deps import ERRORS, AgentState
from piseduce.agent.api.deps import db as db_work
from piseduce.agent.auth import admin as require_admin
from piseduce.agent.booking import Limits
from piseduce.agent.drivers import load_driver
from piseduce.agent.drivers.base import Driver
from piseduce.agent.gate import TokenGate
from piseduce.agent.inventory import Inventory
from piseduce.agent.lifecycle import STATUSES
from piseduce.agent.models import NODE_STATUSES, Node, Reservation
from piseduce.agent.schemas import MAX_UPLOAD_B64
from piseduce.agent.sealed import agent_key
from piseduce.body_limit import BodyLimit
from piseduce.config import AgentConfig, ConfigError, load_agent_config
from piseduce.crypto import KeyFileError
from piseduce.db import make_engine, session_factory

log = logging.getLogger(__name__)

CONFIG_ENV = "PISEDUCE_AGENT_CONFIG"
# A worker process is a fresh interpreter: the command's --log-level and --log-format travel here.
LOG_LEVEL_ENV = "PISEDUCE_AGENT_LOG_LEVEL"
LOG_FORMAT_ENV = "PISEDUCE_AGENT_LOG_FORMAT"
# Request bodies are capped while they stream in (piseduce.body_limit): 1 MiB, and for the deploy
# form, which may carry a firmware file base64-encoded, that file's limit on top.
MAX_BODY_BYTES = 1 << 20
DEPLOY_BODY_BYTES = MAX_UPLOAD_B64 + MAX_BODY_BYTES
BODY_RULES = ((r"/api/reservations/[^/]+/deploy", DEPLOY_BODY_BYTES),)


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
        for st in STATUSES:
            res.add_metric([st], by_status.get(st, 0))
        for st in NODE_STATUSES:
            nodes.add_metric([st], by_node.get(st, 0))
        return [res, nodes]


class Guard:
    """Pure ASGI middleware: request counts and latency per route (401 and 413 answers included)."""

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


def _too_large(limit: int) -> Response:
    return JSONResponse(
        {"detail": f"request body larger than {limit} bytes, the limit of this route"},
        status_code=413,
        headers={"Connection": "close"},
    )


def _load_driver(config: AgentConfig, sessions: sessionmaker[Session]) -> Driver:
    try:
        return load_driver(config, sessions)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        key = "driver" if config.driver else "node_type"
        target = config.driver or config.node_type
        raise ConfigError(
            f"{config.path}: key {key!r}: cannot load the driver of {target!r} ({exc})"
        ) from None


def _warm_calendar(state: AgentState) -> None:
    """The worker's calendar cache filled with the coming week (CalendarCache.warm_up), so that the
    first Reserve page is not a cold read; a failure only leaves the cache empty."""
    try:
        with state.sessions() as s:
            state.calendar.warm_up(s, holds.hold_bound(s, state.limits))
    except Exception:
        log.warning("reading the coming week's calendar at start failed", exc_info=True)


def create_app(config: AgentConfig, driver: Driver | None = None) -> FastAPI:
    engine = make_engine(config.database_url)
    sessions = session_factory(engine)
    driver = driver or _load_driver(config, sessions)
    try:
        # g5k and iot-lab agents must have the web UI's key; a raspberry agent makes its own.
        fernet = agent_key(config, create=not driver.needs_credentials)
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
        # The coming week's calendar, in the thread pool: requests are served meanwhile.
        warming = asyncio.ensure_future(db_work(_warm_calendar, state))
        yield
        try:
            await warming  # before the engine goes: it may still be reading
            await driver.close()
        finally:
            engine.dispose()

    app = FastAPI(
        title=f"PiSeduce agent ({config.node_type})",
        version=piseduce.__version__,
        description='Reservations and deployments of one testbed site. Every error is JSON {"detail": ...}.',
        lifespan=lifespan,
        default_response_class=errors.SafeJSONResponse,
    )
    app.state.agent = state
    registry = CollectorRegistry()
    registry.register(ReservationCollector(sessions))
    registry.register(monitoring.MonitoringCollector(state))
    app.state.registry = registry

    routers = (health, nodes, reservations, slots, admin, events, monitoring, credentials)
    for router in (m.router for m in routers):
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

    errors.install(app)

    # Added innermost first: Guard (metrics) sees every answer, the token is checked before the
    # body is read, and the body is capped while it streams.
    app.add_middleware(BodyLimit, default=MAX_BODY_BYTES, rules=BODY_RULES, too_large=_too_large)
    app.add_middleware(TokenGate, tokens=config.auth_token, open_endpoints=config.open_endpoints)
    app.add_middleware(Guard, registry=registry)
    return app


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --factory` with several workers."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"{CONFIG_ENV} is not set: it must name the agent's config file")
    from piseduce.logs import configure

    configure(level=os.environ.get(LOG_LEVEL_ENV, "info"), fmt=os.environ.get(LOG_FORMAT_ENV, "text"))
    return create_app(load_agent_config(path))
