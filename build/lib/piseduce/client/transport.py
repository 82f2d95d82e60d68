"""What the sync and async clients share around httpx: the base URL, the headers, reading an
answer or a refusal, and how long to wait before asking again."""

from __future__ import annotations

import json
import warnings
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from piseduce import __version__
from piseduce.client.calls import API_PREFIX, Call
from piseduce.client.errors import AgentsUnavailable, ApiError, PiseduceError, Unreachable

T = TypeVar("T")
USER_AGENT = f"piseduce-client/{__version__}"
# A 429 is waited out (its Retry-After, bounded) this many times before it is reported.
RETRIES_429 = 3
MAX_RETRY_AFTER = 30.0
# The API's header naming the agents a list could not ask (webui/api/routes_reservations.py).
UNAVAILABLE_HEADER = "X-Piseduce-Unavailable"


def api_base(url: str) -> str:
    """The API's root from the web UI's address, with or without `/api/v1` at its end."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PiseduceError(f"{url[:120]!r} is not a web UI address (write it as https://host[:port])")
    return text if text.endswith(API_PREFIX) else text + API_PREFIX


def headers(token: str) -> dict[str, str]:
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise PiseduceError("the token is empty or holds spaces: paste it as Settings showed it (pst_…)")
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": USER_AGENT}


def request_args(call: Call[Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"params": call.params}
    if call.body is not None:
        args["json"] = call.body
    return args


def retry_after(response: httpx.Response, attempt: int) -> float | None:
    """Seconds to wait before sending a refused call again, or None to report the refusal: the
    429's Retry-After, or (none, or not a number) a doubling pause from 1 s; never past
    MAX_RETRY_AFTER (a longer wait is reported at once: the caller decides, not a hidden sleep)."""
    if response.status_code != 429 or attempt >= RETRIES_429:
        return None
    doubling = float(2**attempt)
    try:
        seconds = float(response.headers.get("Retry-After", doubling))
    except ValueError:
        seconds = doubling
    if seconds != seconds or seconds < 0:  # NaN or negative: not a pause a server meant
        seconds = doubling
    return seconds if seconds <= MAX_RETRY_AFTER else None


def read(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise refusal(call, response)
    missing = response.headers.get(UNAVAILABLE_HEADER)
    if missing and not call.quiet:
        warnings.warn(AgentsUnavailable(missing, f"{call.method} {call.path}"), stacklevel=4)
    if response.status_code == 204 or not response.content:
        return call.read(None)
    try:
        data = response.json()
    except json.JSONDecodeError:
        raise PiseduceError(
            f"{call.method} {call.path} answered no JSON (HTTP {response.status_code}): "
            "is the URL the web UI's? (pisctl login URL)"
        ) from None
    return call.read(data)


def refusal(call: Call[Any], response: httpx.Response) -> ApiError:
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, AttributeError):
        detail = response.text[:200].strip() or response.reason_phrase
    if response.status_code == 401 and not detail:
        detail = "the token was refused"
    return ApiError(response.status_code, detail, method=call.method, path=call.path)


def agent_silent(exc: ApiError) -> bool:
    """A 503: the web UI is up but the reservation's agent did not answer; a wait asks again."""
    return exc.status == 503


def unreachable(base: str, exc: Exception) -> Unreachable:
    return Unreachable(f"no answer from the web UI at {base} ({type(exc).__name__}: {exc}); is it running?")
