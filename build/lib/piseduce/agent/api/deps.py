"""What every router needs: the agent's state, database calls off the event loop, and the mapping
of driver errors to HTTP answers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from cryptography.fernet import Fernet
from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from piseduce.agent.booking import BookingError, Limits
from piseduce.agent.calendar_cache import CalendarCache
from piseduce.agent.drivers.base import (
    ActionRefused,
    BookingRefused,
    CredentialsRequired,
    Driver,
    DriverError,
    InvalidParams,
    Process,
)
from piseduce.agent.inventory import Inventory
from piseduce.config import AgentConfig
from piseduce.protocol import ErrorOut, Feature

log = logging.getLogger(__name__)
T = TypeVar("T")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Documented on every route, so that clients (and schemathesis) know each answer.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("Missing or malformed X-Piseduce-* header (or unreadable X-Piseduce-Credentials)"),
    401: _err("Missing or wrong agent token"),
    403: _err("Administrators only, or the user's testbed credentials are missing or refused"),
    404: _err("No such object, or not the caller's"),
    409: _err("Not possible now; the detail says why"),
    413: _err("Request body too large"),
    422: _err("Invalid input; the detail names the field"),
    502: _err("The remote testbed failed or did not answer"),
    503: _err("The agent's database is busy; try again"),
}

TESTBED_NAMES = {"g5k": ("Grid'5000", "G5k Credentials"), "iot-lab": ("FIT IoT-LAB", "IoT-LAB Credentials")}


@dataclass
class AgentState:
    config: AgentConfig
    driver: Driver
    engine: Engine
    sessions: sessionmaker[Session]
    # The key file: reads forwarded testbed credentials, seals the deploy form's secrets.
    fernet: Fernet
    inventory: Inventory
    limits: Limits
    # The calendar's windows, cached while the database's calendar generation holds.
    calendar: CalendarCache = field(default_factory=CalendarCache, repr=False)
    _processes: dict[str, Process] | None = field(default=None, repr=False)
    _features: frozenset[Feature] | None = field(default=None, repr=False)

    def processes(self) -> dict[str, Process]:
        if self._processes is None:
            self._processes = dict(self.driver.processes())
        return self._processes

    def features(self) -> frozenset[Feature]:
        """What /api/info advertises (the driver's, for the processes it has)."""
        if self._features is None:
            self._features = self.driver.features(self.processes())
        return self._features


def get_state(request: Request) -> AgentState:
    st: AgentState = request.app.state.agent
    return st


StateDep = Annotated[AgentState, Depends(get_state)]


async def db(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking database work in the thread pool (SQLite may wait on its busy timeout)."""
    return await run_in_threadpool(fn, *args)


def booking_http(exc: BookingError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


def credentials_detail(config: AgentConfig, exc: Exception) -> str:
    testbed, tab = TESTBED_NAMES.get(config.node_type, ("testbed", "Credentials"))
    reason = str(exc).strip()
    return f"{testbed} credentials missing or refused: set them in Settings → {tab}" + (
        f" ({reason})" if reason else ""
    )


def driver_http(config: AgentConfig, exc: Exception, what: str) -> HTTPException:
    """Map what a driver raised to the answer (the messages are meant for users)."""
    if isinstance(exc, HTTPException):
        return exc
    if isinstance(exc, InvalidParams):
        return HTTPException(422, str(exc))
    if isinstance(exc, BookingRefused | ActionRefused):
        return HTTPException(409, str(exc))
    if isinstance(exc, CredentialsRequired):
        return HTTPException(403, credentials_detail(config, exc))
    if isinstance(exc, DriverError):
        return HTTPException(502, f"{what}: {exc}")
    log.error("%s failed", what, exc_info=exc)
    return HTTPException(
        502, f"{what} failed: the {config.node_type} side did not answer ({type(exc).__name__}: {exc})"[:500]
    )


@contextlib.asynccontextmanager
async def driver_errors(state: AgentState, what: str) -> AsyncIterator[None]:
    try:
        yield
    except HTTPException:
        raise
    except Exception as exc:
        raise driver_http(state.config, exc, what) from exc
