"""One web UI worker process: what `piseduce webui serve` runs once, or `workers` times.

With `workers` above 1, uvicorn's supervisor binds the port and spawns the workers, each of which
imports this module and calls `app()` (uvicorn's factory): the configuration travels in the
environment (CONFIG_ENV), as the workers are fresh interpreters. Everything workers must agree on
lives in the database or in files (README, "Several workers"): sessions, the login limiter, API
tokens, agents and their status; the session secret is created by the supervisor before they start.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

CONFIG_ENV = "PISEDUCE_WEBUI_CONFIG"
LOG_LEVEL_ENV = "PISEDUCE_WEBUI_LOG_LEVEL"
LOG_FORMAT_ENV = "PISEDUCE_WEBUI_LOG_FORMAT"
# Tests only: each answer names the worker that served it, to show requests spread over workers.
WORKER_HEADER_ENV = "PISEDUCE_WEBUI_WORKER_HEADER"
WORKER_HEADER = "X-Piseduce-Worker"


def tune_process() -> None:
    """A page of thousands of rows is laid out and rendered in a worker thread, and the event loop
    must keep answering meanwhile. Two things would still stall it: a full garbage collection,
    which holds the GIL while it walks every object (160-200 ms once a big calendar's rows exist,
    most of it the modules and app loaded once), so what is loaded now is frozen out of it; and
    CPython's 5 ms switch interval, which the loop waits at each GIL hand-over (1 ms)."""
    gc.freeze()
    sys.setswitchinterval(0.001)


def _name_worker(web: FastAPI) -> None:
    pid = str(os.getpid())

    async def mark(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers[WORKER_HEADER] = pid
        return response

    web.middleware("http")(mark)


def app() -> FastAPI:
    """The app of one worker (uvicorn's factory)."""
    from piseduce.config import load_webui_config
    from piseduce.logs import configure
    from piseduce.webui.app import create_app

    configure(level=os.environ.get(LOG_LEVEL_ENV, "info"), fmt=os.environ.get(LOG_FORMAT_ENV, "text"))
    web = create_app(load_webui_config(os.environ[CONFIG_ENV]))
    if os.environ.get(WORKER_HEADER_ENV) == "1":
        _name_worker(web)
    tune_process()
    return web
