"""The agent's front door, as pure ASGI middleware: the token is checked before anything else.

FastAPI reads and parses a request's body before it resolves the route's dependencies, so a check
in a dependency comes too late: anyone could make the agent read and parse a large body. Here a
request without a valid `Authorization: Bearer <token>` is answered 401 before its body is read,
whatever its path (unknown paths included). Open without the token: `GET /api/health` (the web
UI's probe), and `/metrics` and the API docs (`/docs`, `/redoc`, `/openapi.json`) only when the
config lists them in `open_endpoints`. The route dependency (`piseduce.agent.auth.caller`) checks
the token again and then the X-Piseduce-* headers.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from piseduce.agent.auth import token_ok

ALWAYS_OPEN = frozenset({"/api/health"})
# What each `open_endpoints` value of the config opens.
OPENABLE: dict[str, frozenset[str]] = {
    "metrics": frozenset({"/metrics"}),
    "docs": frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}),
}


def open_paths(open_endpoints: Iterable[str]) -> frozenset[str]:
    paths = set(ALWAYS_OPEN)
    for name in open_endpoints:
        paths |= OPENABLE[name]
    return frozenset(paths)


def bearer(scope: Scope) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header (scheme case-insensitive)."""
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, credentials = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


class TokenGate:
    def __init__(self, app: ASGIApp, *, tokens: list[str], open_endpoints: Iterable[str] = ()) -> None:
        self.app = app
        self.tokens = list(tokens)
        self.open = open_paths(open_endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open:
            await self.app(scope, receive, send)
            return
        given = bearer(scope)
        if given is None or not token_ok(given, self.tokens):
            resp = JSONResponse(
                {"detail": "missing or wrong agent token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)
