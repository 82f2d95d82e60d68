"""The client waits out a 429 (Retry-After, or a doubling pause without one), a bounded number of
times and never for longer than MAX_RETRY_AFTER, then reports it; sync and async alike."""

from __future__ import annotations

import asyncio
import time
import warnings

import httpx
import pytest

from piseduce.client import ApiError, AsyncClient, Client, WaitTimeout
from piseduce.client import transport as t

ME = {"email": "a@x.org", "role": "user", "via": "token", "scope": "read"}


class Flood:
    """A web UI that answers 429 `refusals` times (with `retry_after` if not None), then 200."""

    def __init__(self, refusals: int, retry_after: str | None) -> None:
        self.refusals = refusals
        self.retry_after = retry_after
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        if len(self.times) <= self.refusals:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return httpx.Response(429, json={"detail": "Too many requests: wait."}, headers=headers)
        return httpx.Response(200, json=ME)

    def pauses(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def test_a_429_is_waited_out_as_retry_after_says() -> None:
    flood = Flood(2, "0.3")
    with Client("http://webui.test", "pst_x", transport=httpx.MockTransport(flood)) as api:
        assert api.me().email == "a@x.org"
    assert len(flood.times) == 3
    assert all(p >= 0.29 for p in flood.pauses())


def test_without_retry_after_the_pause_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    flood = Flood(3, None)
    with Client("http://webui.test", "pst_x", transport=httpx.MockTransport(flood)) as api:
        api.me()
    assert slept == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("retry_after", ["0", "garbage", "-5", "nan"])
def test_it_is_bounded_then_reported(monkeypatch: pytest.MonkeyPatch, retry_after: str) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    flood = Flood(1000, retry_after)
    api = Client("http://webui.test", "pst_x", transport=httpx.MockTransport(flood))
    with api, pytest.raises(ApiError) as refused:
        api.me()
    assert refused.value.status == 429 and "wait" in str(refused.value)
    assert len(flood.times) == t.RETRIES_429 + 1
    assert all(0 <= s <= t.MAX_RETRY_AFTER for s in slept)


def test_a_wait_longer_than_the_bound_is_reported_at_once() -> None:
    flood = Flood(1000, "3600")
    api = Client("http://webui.test", "pst_x", transport=httpx.MockTransport(flood))
    with api, pytest.raises(ApiError) as refused:
        api.me()
    assert refused.value.status == 429
    assert len(flood.times) == 1


def test_the_async_client_waits_too() -> None:
    flood = Flood(2, "0.2")

    async def run() -> str:
        async with AsyncClient("http://webui.test", "pst_x", transport=httpx.MockTransport(flood)) as api:
            return (await api.me()).email

    assert asyncio.run(run()) == "a@x.org"
    assert len(flood.times) == 3


def _reservation(status: str) -> dict[str, object]:
    return {
        "key": "rpi/1", "agent": "rpi", "id": 1, "node": "pi-1", "type": "raspberry", "owner": "a@x.org",
        "bin": "", "status": status, "step": "", "progress": None, "start": "2026-12-01T10:00:00Z",
        "end": "2026-12-01T12:00:00Z", "actions": [], "connection": None, "events": [],
    }


class SilentAgent:
    """A web UI whose agent `rpi` stops answering for `silent` polls during a deployment: its list
    lacks the reservation (X-Piseduce-Unavailable), the reservation's own GET is a 503."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        unavailable = {"X-Piseduce-Unavailable": "rpi: unreachable (timed out)"}
        if request.url.path == "/api/v1/reservations":
            return httpx.Response(200, json=[], headers=unavailable)
        self.gets += 1
        if self.gets <= self.silent:
            detail = "Reservation rpi/1: agent rpi: unreachable; try again later."
            return httpx.Response(503, json={"detail": detail}, headers={"Retry-After": "5"})
        return httpx.Response(200, json=_reservation("deployed"))


def test_a_wait_rides_out_an_agent_that_is_silent_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    web = SilentAgent(silent=3)
    api = Client("http://webui.test", "pst_x", transport=httpx.MockTransport(web))
    with api, warnings.catch_warnings():
        warnings.simplefilter("error")  # the wait handles the partial list: no warning per poll
        done = api.wait_deployed(["rpi/1"], timeout=60)
    assert [r.status for r in done] == ["deployed"]
    assert web.gets == 4


def test_a_wait_on_a_silent_agent_times_out_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    api = Client("http://webui.test", "pst_x", transport=httpx.MockTransport(SilentAgent(silent=10**6)))
    with api, pytest.raises(WaitTimeout) as late:
        api.wait_deployed(["rpi/1"], timeout=30)
    assert "rpi/1" in str(late.value) and "did not answer" in str(late.value)


def test_the_async_wait_rides_it_out_too() -> None:
    web = SilentAgent(silent=2)

    async def run() -> list[str]:
        async with AsyncClient("http://webui.test", "pst_x", transport=httpx.MockTransport(web)) as api:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                return [r.status for r in await api.wait_deployed(["rpi/1"], timeout=60)]

    assert asyncio.run(run()) == ["deployed"]
