"""The users' REST API (DESIGN §8), a FastAPI application mounted by the web UI at /api/v1.

Its own application, so that it has its own OpenAPI spec (/api/v1/openapi.json), its own
interactive docs (/api/v1/docs, Swagger UI served from the swagger-ui-bundle package: no CDN, and
no inline script, so the pages' Content-Security-Policy holds), its own errors (JSON
`{"detail": "<one sentence>"}`, never a page) and its own authentication (webui/api/auth.py:
no CSRF field of the pages' forms, the header instead). It shares the web UI's state: database,
agent hub, key file, limiter.
"""

from __future__ import annotations

import logging
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from starlette.datastructures import State

from piseduce.agent import errors
from piseduce.agent.errors import SafeJSONResponse
from piseduce.api_models import ErrorOut
from piseduce.webui.agents import detail_words
from piseduce.webui.api import (
    routes_account,
    routes_audit,
    routes_catalog,
    routes_reservations,
    routes_slots,
)

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
VERSION = "1.0"
DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PiSeduce API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{prefix}/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{prefix}/docs/assets/swagger-ui-bundle.js"></script>
<script src="{prefix}/docs/init.js"></script></body></html>
"""
DOCS_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "%s/docs/openapi.json", dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout", deepLinking: true });
});
"""
DESCRIPTION = (
    "The PiSeduce web UI's API for scripts: book nodes of every agent, deploy them, follow the "
    "deployment, act on them and give them back. Authenticate with a personal access token "
    "(Settings > API tokens) sent as `Authorization: Bearer pst_…`. Errors are JSON "
    '`{"detail": "…"}`. See docs/api.md.'
)


def _one_sentence(exc: RequestValidationError) -> str:
    words = detail_words(list(exc.errors()))
    return f"Invalid request: {words[:600]}."


async def _invalid(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return SafeJSONResponse({"detail": _one_sentence(exc)}, status_code=422)


async def _db_busy(_request: Request, exc: Exception) -> Response:
    log.error("database error: %s", exc)
    return SafeJSONResponse(
        {"detail": "The web UI's database is busy: try again."}, status_code=503, headers={"Retry-After": "2"}
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            servers=[{"url": PREFIX}],
        )
        spec.setdefault("components", {})["securitySchemes"] = {
            "token": {"type": "http", "scheme": "bearer", "description": "A personal access token, pst_…"}
        }
        spec["security"] = [{"token": []}]
        app.openapi_schema = spec
    return app.openapi_schema


def create_api(state: State) -> FastAPI:
    """The API application, sharing the web UI's `state`."""
    documented: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut, "description": words}
        for code, words in (
            (401, "Not authenticated (or a bad token)"),
            (403, "Not allowed"),
            (400, "Malformed request (the body is not JSON)"),
            (404, "Not found, or not yours"),
            (409, "Not possible now (not free, or not in this status): the reason"),
            (422, "Invalid input"),
            (429, "Too many wrong tokens: wait Retry-After seconds"),
            (503, "An agent did not answer: try again after Retry-After seconds"),
        )
    }
    api = FastAPI(
        title="PiSeduce API",
        version=VERSION,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        responses=documented,
    )
    api.state = state
    # The agent's error answers (always JSON, always encodable, 405 with every allowed method),
    # with the API's own words for invalid input and a busy database.
    errors.install(api)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(OperationalError, _db_busy)
    for module in (routes_account, routes_catalog, routes_reservations, routes_slots, routes_audit):
        api.include_router(module.router)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(_openapi(api))

    @api.get("/docs/openapi.json", include_in_schema=False)
    async def docs_spec() -> JSONResponse:
        # The packaged Swagger UI (4.x) reads OpenAPI 3.0 only; it shows this 3.1 spec well when
        # told it is 3.0 (the spec itself, for programs, stays /openapi.json as generated).
        return JSONResponse({**_openapi(api), "openapi": "3.0.3"})

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML.format(prefix=PREFIX))

    @api.get("/docs/init.js", include_in_schema=False)
    async def docs_init() -> Response:
        return Response(DOCS_INIT % PREFIX, media_type="text/javascript")

    api.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    return api
