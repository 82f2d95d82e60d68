"""How the agent answers errors: always JSON `{"detail": ...}`, always encodable.

A 422 echoes the input that was refused; when that input holds what JSON cannot carry (NaN,
Infinity, lone surrogates) the default handlers fail to encode their own answer and the client
gets a 500. Here every answer goes through `piseduce.jsonsafe.dumps`, which cannot fail that way.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from piseduce import jsonsafe

log = logging.getLogger(__name__)


class SafeJSONResponse(JSONResponse):
    """The agent's response class: strict JSON, hostile content cleaned rather than a crash."""

    def render(self, content: Any) -> bytes:
        return jsonsafe.dumps(content)


def _allowed_methods(app: FastAPI, request: Request) -> set[str]:
    return _allowed_in(app.router.routes, dict(request.scope))


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_in(routes: Any, scope: dict[str, Any]) -> set[str]:
    # Starlette names only the first matching route's methods; list those of every route of this
    # path (GET and POST /api/reservations are two routes), inside mounted apps too (the web UI's
    # /api/v1: its 405s went out with an empty Allow). Each method is asked of the routes (a full
    # match allows it) rather than read from their `methods`: FastAPI's included routers have none.
    allowed: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            match, child = route.matches(scope)
            if match != Match.NONE:
                allowed |= _allowed_in(route.routes, {**scope, **child})
            continue
        allowed |= {m for m in METHODS if route.matches({**scope, "method": m})[0] == Match.FULL}
    return allowed


def install(app: FastAPI) -> None:
    """Register the agent's error handlers on `app`."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request)))
            return SafeJSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers=headers)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=headers)
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(OperationalError)
    async def db_busy(_request: Request, exc: OperationalError) -> Response:
        log.error("database error: %s", exc.orig)
        return SafeJSONResponse(
            {"detail": "the agent's database is busy or unavailable; try again"}, status_code=503
        )

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc)
        return SafeJSONResponse({"detail": "internal error of the agent (see its log)"}, status_code=500)
