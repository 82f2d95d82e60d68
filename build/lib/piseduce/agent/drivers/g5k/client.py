"""A small async client of the Grid'5000 REST API (protocols.md §A) for the g5k driver.

HTTP Basic auth with the user's Grid'5000 login, `Accept: application/json`, bounded timeouts,
and retries with exponential back-off on 5xx answers and connection errors for the idempotent
verbs (GET, PUT, DELETE). POSTs are never retried blindly here: submitting a job twice would hold
two sets of nodes, so the callers check what the failed POST may have created before retrying.

python-grid5000 (requests, blocking) would stall the agent's event loop, so the agent speaks the
same HTTP itself; the emulator's tests prove python-grid5000 works against the same routes.

The password lives only in this object's `httpx` auth; it never appears in a message, a log line
or a `repr`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
import time
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import httpx

log = logging.getLogger(__name__)

# OAR reads reservation dates in the sites' local time (every Grid'5000 site is in France).
SITE_TZ = ZoneInfo("Europe/Paris")
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class G5kError(Exception):
    """An answer of the API that is not a success; `message` is meant for users."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class G5kAuthError(G5kError):
    """401: the login or password was refused."""


class G5kUnavailable(G5kError):
    """5xx or no connection, after the retries."""


class G5kNotFound(G5kError):
    """404."""


def error_text(response: httpx.Response) -> str:
    """The human part of an error answer. The API answers errors in plain text, often wrapping
    OAR's or Kadeploy's message in its proxy's words ("Request to ... failed with status 400: ...")."""
    text = response.text.strip()
    if text.startswith("{"):
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("message", "error", "detail"):
                if isinstance(data.get(key), str):
                    text = data[key]
                    break
    m = re.search(r"failed with status \d+:\s*(.*)", text, re.S)
    if m and m.group(1).strip():
        text = m.group(1).strip()
    text = " ".join(text.split())
    return (text or response.reason_phrase or f"HTTP {response.status_code}")[:600]


def oar_walltime(seconds: float) -> str:
    """Seconds → OAR's `H:MM:SS`, rounded up to the minute (OAR counts in whole minutes anyway)."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def oar_reservation(when: dt.datetime) -> str:
    """An aware datetime → OAR's `YYYY-MM-DD HH:MM:SS` in the site's local time."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(SITE_TZ).strftime("%Y-%m-%d %H:%M:%S")


class G5kClient:
    """One user's session with one site's API. Use as `async with G5kClient(...) as api:`."""

    def __init__(
        self,
        base_url: str,
        site: str,
        user: str | None,
        password: str | None,
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        backoff: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.site = site
        self.user = user or ""
        self.attempts = max(1, attempts)
        self.backoff = backoff
        auth = httpx.BasicAuth(user, password or "") if user else None
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"Accept": "application/json", "User-Agent": "piseduce-agent"},
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"<G5kClient {self.site} user={self.user!r}>"

    async def __aenter__(self) -> G5kClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    @property
    def site_path(self) -> str:
        return f"/sites/{self.site}"

    # ------------------------------------------------------------ the HTTP layer

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        retry: bool | None = None,
    ) -> httpx.Response:
        """One call; retried on 5xx/connection errors when idempotent (or `retry=True`)."""
        retry = method in ("GET", "PUT", "DELETE", "HEAD") if retry is None else retry
        tries = self.attempts if retry else 1
        last: G5kUnavailable | None = None
        for attempt in range(tries):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), 30.0)
                log.info("Grid'5000 API %s %s: retrying in %.1f s (%s)", method, path, delay, last)
                await asyncio.sleep(delay)
            try:
                resp = await self._http.request(method, path, params=params, json=json)
            except httpx.TimeoutException:
                last = G5kUnavailable(f"the Grid'5000 API did not answer {method} {path} in time")
                continue
            except httpx.TransportError as exc:
                last = G5kUnavailable(f"cannot reach the Grid'5000 API ({type(exc).__name__}: {exc})")
                continue
            if resp.status_code in RETRY_STATUSES or resp.status_code >= 500:
                last = G5kUnavailable(
                    f"the Grid'5000 API answered HTTP {resp.status_code} to {method} {path}: "
                    f"{error_text(resp)}",
                    resp.status_code,
                )
                if resp.status_code not in RETRY_STATUSES:
                    break
                continue
            return self._check(resp, method, path)
        assert last is not None
        if tries > 1:
            last = G5kUnavailable(f"{last.message} (after {tries} attempts)", last.status)
        raise last

    def _check(self, resp: httpx.Response, method: str, path: str) -> httpx.Response:
        if resp.is_success:
            return resp
        text = error_text(resp)
        if resp.status_code == 401:
            raise G5kAuthError(f"Grid'5000 refused the login {self.user!r}", 401)
        if resp.status_code == 404:
            raise G5kNotFound(text, 404)
        raise G5kError(text, resp.status_code)

    async def get(self, path: str, **params: Any) -> Any:
        resp = await self.request("GET", path, params=params or None)
        try:
            return resp.json()
        except ValueError:
            raise G5kUnavailable(
                f"the Grid'5000 API answered GET {path} with something that is not JSON"
            ) from None

    async def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """A collection's items, following `offset` pages until `total` is reached."""
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = await self.get(path, **params, offset=offset) if offset else await self.get(path, **params)
            if isinstance(page, list):
                return page
            batch = page.get("items") or []
            out.extend(batch)
            total = int(page.get("total", len(out)))
            if not batch or len(out) >= total:
                return out
            offset = len(out)

    # ------------------------------------------------------------ reference and status

    async def clusters(self) -> list[dict[str, Any]]:
        return await self.items(f"{self.site_path}/clusters")

    async def nodes(self, cluster: str) -> list[dict[str, Any]]:
        return await self.items(f"{self.site_path}/clusters/{cluster}/nodes")

    async def status(self) -> dict[str, Any]:
        data = await self.get(f"{self.site_path}/status", disks="no", job_details="yes", waiting="yes")
        if not isinstance(data, dict):
            raise G5kUnavailable("the Grid'5000 status answer is not an object")
        return data

    async def environments(self) -> list[dict[str, Any]]:
        return await self.items(f"{self.site_path}/environments")

    # ------------------------------------------------------------ jobs

    async def job(self, uid: int | str) -> dict[str, Any]:
        data = await self.get(f"{self.site_path}/jobs/{uid}")
        if not isinstance(data, dict):
            raise G5kUnavailable(f"the Grid'5000 answer about job {uid} is not an object")
        return data

    async def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        return await self.items(f"{self.site_path}/jobs", **filters)

    async def submit_job(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST the job. When the API fails (5xx, no answer), look for a job of this name before
        trying again, so that a job OAR accepted behind a failing proxy is adopted, not doubled."""
        name = payload["name"]
        began = time.time()
        last: G5kUnavailable | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
                try:
                    found = await self.jobs(user=self.user, name=name, state="waiting,launching,running")
                except G5kUnavailable:
                    found = []
                # Only a job of this very request: same name and filter, submitted since it began.
                found = [
                    j
                    for j in found
                    if j.get("properties") == payload.get("properties")
                    and float(j.get("submitted_at") or 0) >= began - 60
                ]
                if found:
                    log.info(
                        "Grid'5000 job %s (%s) was created by an earlier attempt", found[0].get("uid"), name
                    )
                    return found[0]
            try:
                resp = await self.request("POST", f"{self.site_path}/jobs", json=payload, retry=False)
            except G5kUnavailable as exc:
                last = exc
                continue
            data = resp.json()
            if not isinstance(data, dict) or "uid" not in data:
                raise G5kUnavailable("the Grid'5000 API accepted the job but did not say its id")
            return data
        assert last is not None
        raise G5kUnavailable(f"{last.message} (after {self.attempts} attempts)", last.status)

    async def delete_job(self, uid: int | str) -> bool:
        """Delete the job; False when it was already gone (finished, killed or unknown)."""
        try:
            await self.request("DELETE", f"{self.site_path}/jobs/{uid}")
        except G5kNotFound:
            return False
        except G5kError as exc:
            if exc.status in (400, 403) and "already" in exc.message.lower():
                return False
            if exc.status == 400:
                # Some OAR versions refuse to delete a finished job without saying "already".
                job = await self.job(uid)
                if str(job.get("state")) in ("terminated", "error"):
                    return False
            raise
        return True

    async def change_walltime(self, uid: int | str, delta: str) -> dict[str, Any]:
        resp = await self.request(
            "POST", f"{self.site_path}/jobs/{uid}/walltime", json={"walltime": delta}, retry=False
        )
        try:
            data = resp.json()
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------ deployments

    async def deployment(self, uid: str) -> dict[str, Any]:
        data = await self.get(f"{self.site_path}/deployments/{uid}")
        if not isinstance(data, dict):
            raise G5kUnavailable(f"the Grid'5000 answer about deployment {uid} is not an object")
        return data

    async def submit_deployment(self, payload: dict[str, Any], since: float) -> dict[str, Any]:
        """POST the Kadeploy run; on 5xx/no answer, adopt a run of these nodes created since
        `since` (epoch seconds) before trying again. Kadeploy's own refusals (HTTP 500 "Cannot
        launch deployment: ...") are final: retrying would not change them."""
        nodes = set(payload["nodes"])
        last: G5kUnavailable | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
                try:
                    found = await self.items(f"{self.site_path}/deployments", user=self.user)
                except G5kUnavailable:
                    found = []
                for d in found:
                    if set(d.get("nodes") or []) == nodes and float(d.get("created_at") or 0) >= since - 1:
                        return d
            try:
                resp = await self.request("POST", f"{self.site_path}/deployments", json=payload, retry=False)
            except G5kUnavailable as exc:
                if "cannot launch deployment" in exc.message.lower():
                    raise G5kError(exc.message.split(": ", 1)[-1], exc.status) from None
                last = exc
                continue
            data = resp.json()
            if not isinstance(data, dict) or "uid" not in data:
                raise G5kUnavailable("the Grid'5000 API accepted the deployment but did not say its id")
            return data
        assert last is not None
        raise G5kUnavailable(f"{last.message} (after {self.attempts} attempts)", last.status)
