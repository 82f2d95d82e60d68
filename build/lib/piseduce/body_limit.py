"""A streamed cap on the size of request bodies, as pure ASGI middleware (agent and web UI).

A `Content-Length` over the route's limit is refused before anything is read. A body without one
(`Transfer-Encoding: chunked`) is counted as it arrives: once it passes the limit, the 413 is sent
at once and the application gets `http.disconnect`, so it never holds more than the limit (plus
one chunk) in memory; what the client still sends is not read (the server closes the connection).

Limits are data: a default, and (path pattern, limit) rules for the routes that take more (the
deploy form with a firmware file) or less (the login form). Every route is covered, including
the ones added later: a route cannot forget the check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TooLarge = Callable[[int], Response]


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header; -1 when it is not a number (refused like a too-large body)."""
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


class BodyLimit:
    """Refuse request bodies larger than the limit of their route with the `too_large` answer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: int,
        too_large: TooLarge,
        rules: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.app = app
        self.default = default
        self.too_large = too_large
        self.rules = [(re.compile(pattern), limit) for pattern, limit in rules]

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.rules:
            if pattern.fullmatch(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _declared_length(scope)
        if declared is not None and not 0 <= declared <= limit:
            await self.too_large(limit)(scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await self.too_large(limit)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer; what the application says after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            # The application saw the body cut short (a disconnect, an unparsable prefix): the
            # 413 already answered, so that is not an error of the service.
            if not refused:
                raise
