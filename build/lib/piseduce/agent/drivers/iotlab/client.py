"""Calls to the IoT-LAB REST API through iotlabcli's Python API, from async code.

iotlabcli is synchronous (requests), so every call runs in a worker thread. Its `Api` reads the base
URL from a class attribute set at import time; `SiteApi` sets it per instance instead (the agent's
`iotlab_api_url`) and adds a timeout, which iotlabcli leaves unbounded. Credentials live only in the
`Api` object of one call: never in the environment, a file, a command line or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.error import HTTPError

import requests
from iotlabcli import rest

from piseduce.agent.drivers.base import CredentialsRequired, DriverError

log = logging.getLogger(__name__)

T = TypeVar("T")

CREDENTIALS_MESSAGE = "IoT-LAB credentials missing/refused: set them in Settings → IoT-LAB Credentials"
TRANSIENT_CODES = (502, 503, 504)


class RemoteError(DriverError):
    """The API answered with an error; `message` is the testbed's own message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientError(DriverError):
    """The API could not be reached or was temporarily unavailable: worth trying again later."""


class SiteApi(rest.Api):  # type: ignore[misc]  # iotlabcli is untyped
    def __init__(self, user: str | None, password: str | None, url: str, timeout: float) -> None:
        super().__init__(user, password)
        if user is None:
            self.auth = None  # an anonymous request, not "None:None"
        self.url = url if url.endswith("/") else url + "/"  # iotlabcli joins with urljoin
        self.timeout = timeout

    def _request(self, url: str, method: str, **kwargs: Any) -> requests.Response:
        # Unlike iotlabcli, let requests' own exceptions through so that they can be told apart.
        return requests.request(method, url, timeout=self.timeout, **kwargs)


def remote_message(exc: HTTPError) -> str:
    """The `message` of the testbed's JSON error body, else its text, shortened."""
    body = "".join(
        line[1:] if line.startswith("\t") else line for line in str(exc.msg).splitlines(True)
    ).strip()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])[:500]
    return (body or f"HTTP {exc.code}")[:500]


def translate(exc: Exception) -> DriverError:
    """The driver error that an exception of iotlabcli or requests stands for."""
    if isinstance(exc, HTTPError):
        if exc.code in (401, 403):
            return CredentialsRequired(f"refused by the IoT-LAB API (HTTP {exc.code})")
        if exc.code in TRANSIENT_CODES:
            return TransientError(f"IoT-LAB API unavailable (HTTP {exc.code}): {remote_message(exc)}")
        return RemoteError(exc.code, remote_message(exc))
    if isinstance(exc, requests.RequestException):
        # The exception's text may carry the URL, never credentials (they travel in a header).
        return TransientError(f"IoT-LAB API unreachable: {type(exc).__name__}")
    if isinstance(exc, ValueError):  # a body that is not JSON
        return TransientError("IoT-LAB API gave an unreadable answer")
    raise exc


class Client:
    """One site's API: `await client.call(credentials, fn)` runs `fn(api)` in a thread."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.3) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def api(self, credentials: Mapping[str, str] | None, anonymous: bool = False) -> SiteApi:
        if anonymous:
            return SiteApi(None, None, self.url, self.timeout)
        user = (credentials or {}).get("user") or ""
        password = (credentials or {}).get("password") or ""
        if not user or not password:
            raise CredentialsRequired("none were forwarded with the request")
        return SiteApi(user, password, self.url, self.timeout)

    async def call(
        self,
        credentials: Mapping[str, str] | None,
        fn: Callable[[SiteApi], T],
        *,
        retry: bool = True,
        anonymous: bool = False,
    ) -> T:
        """Run `fn(api)`; transient failures are retried (when `retry`) with a growing pause.
        Only idempotent calls may be retried: a submission is not, it is adopted by name instead."""
        api = self.api(credentials, anonymous)
        attempts = self.retries if retry else 1
        for attempt in range(attempts):
            try:
                return await asyncio.to_thread(fn, api)
            except Exception as exc:  # noqa: BLE001 - translated into the driver's errors just below
                error = translate(exc)
                if not isinstance(error, TransientError) or attempt == attempts - 1:
                    raise error from None
                log.info("IoT-LAB API: %s; trying again", error)
                await asyncio.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")
