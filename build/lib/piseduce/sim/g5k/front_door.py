"""What the Grid'5000 proxy does before the API sees a request: HTTP Basic auth, the emulator's
fault knobs (latency, 503s, lost answers) and the API errors as plain text; and the version prefix
(/stable, /3.0, /sid) a request came through, kept for the links."""

from __future__ import annotations

import asyncio
import base64
import binascii

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from piseduce.sim.g5k.model import G5kSim
from piseduce.sim.g5k.records import SimError
from piseduce.sim.g5k.web import error_response


class G5kFrontDoor:
    """What the Grid'5000 proxy does before the API sees a request: Basic auth (401 otherwise),
    plus the emulator's fault knobs (latency, 5xx) and the error mapping."""

    def __init__(self, app: ASGIApp, sim: G5kSim) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        if self.sim.faults.latency:
            await asyncio.sleep(self.sim.faults.latency)
        if self.sim.injected_failure():
            await PlainTextResponse("Service Unavailable (emulated fault)", status_code=503)(
                scope, receive, send
            )
            return
        user = self._authenticate(scope)
        if user is None:
            resp = PlainTextResponse(
                "Authorization Required",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Grid5000 API"'},
            )
            await resp(scope, receive, send)
            return
        scope["g5k_user"] = user
        lost = self.sim.answer_lost()
        target = send
        if lost:

            async def swallow(message: Message) -> None:
                return None

            target = swallow
        try:
            await self.app(scope, receive, target)
        except SimError as exc:
            await error_response(exc)(scope, receive, target)
        if lost:
            await PlainTextResponse("Bad Gateway (emulated: the answer was lost)", status_code=502)(
                scope, receive, send
            )

    def _authenticate(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "basic":
                    return None
                try:
                    user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    return None
                if sep and self.sim.authenticate(user, password):
                    return user
                return None
        return None


class VersionPrefix:
    """Remember which version prefix (/stable, /3.0, /sid) a request came through, for links."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["g5k_prefix"] = self.prefix
        await self.app(scope, receive, send)
