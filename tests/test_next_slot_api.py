"""POST /api/next-slot through the agent's whole HTTP stack: the answer is bookable as given, the
user's own holds count, hostile input is a 4xx, and the answer reveals no other user's booking."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from helpers.agent_helpers import headers

ALICE = headers("alice@example.org")
BOB = headers("bob@example.org")


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def soon(hours: float = 1) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0, second=0) + dt.timedelta(hours=hours)


async def ask(client: httpx.AsyncClient, h: dict[str, str] = ALICE, **body: Any) -> httpx.Response:
    body.setdefault("duration_hours", 1)
    return await client.post("/api/next-slot", json=body, headers=h)


async def test_next_slot_is_bookable_and_respects_the_gap(
    client: httpx.AsyncClient, nodes: list[str]
) -> None:
    start = soon(1)
    # Bob holds every RPI4B from +1 h to +3 h.
    r = await client.post(
        "/api/reservations",
        json={
            "filters": [{"count": 4, "properties": {"model": "RPI4B"}}],
            "start": iso(start),
            "duration_hours": 2,
        },
        headers=BOB,
    )
    assert r.status_code == 201, r.text
    want = [{"count": 3, "properties": {"model": "rpi4b", "memory_gb": {"min": 4}}}]
    r = await ask(client, filters=want, after=iso(start), duration_hours=3)
    assert r.status_code == 200, r.text
    got = r.json()
    gap = dt.timedelta(minutes=10)  # write_config's turnaround
    assert dt.datetime.fromisoformat(got["start"]) >= start + dt.timedelta(hours=2)
    assert len(got["nodes"]) == 3 and "bob" not in r.text
    # Booking what it answered succeeds; a minute earlier does not.
    early = dt.datetime.fromisoformat(got["start"]) - dt.timedelta(minutes=1)
    r = await client.post(
        "/api/reservations", json={"filters": want, "start": iso(early), "duration_hours": 3}, headers=ALICE
    )
    assert r.status_code == 409, r.text
    r = await client.post(
        "/api/reservations", json={"filters": want, "start": got["start"], "duration_hours": 3}, headers=ALICE
    )
    assert r.status_code == 201, r.text
    assert sorted(x["node"] for x in r.json()["reservations"]) == sorted(got["nodes"])
    assert dt.datetime.fromisoformat(got["start"]) - (start + dt.timedelta(hours=2)) <= gap
    # Now: the RPI3B+ boards are free at once.
    r = await ask(client, filters=[{"count": 2, "properties": {"model": "RPI3B+"}}])
    assert r.status_code == 200 and r.json()["nodes"] == ["pi-5", "pi-6"]


async def test_next_slot_refuses_bad_input_with_4xx(client: httpx.AsyncClient, nodes: list[str]) -> None:
    cases: list[dict[str, Any]] = [
        {"filters": [{"count": 7}]},  # more nodes than exist
        {"filters": [{"nodes": ["nope"]}]},
        {"filters": [{"count": 1}], "duration_hours": 10_000},
        {"filters": [{"count": 1}], "duration_hours": -1},
        {"filters": [{"count": 1}], "after": "2026-01-01T00:00:00"},  # no zone
        {"filters": [{"count": 1}], "after": "9999-12-31T23:59:59Z"},
        {"filters": []},
        {"filters": [{"count": 1}], "extra": 1},
    ]
    for body in cases:
        r = await ask(client, **body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.json()["detail"]
    r = await client.post("/api/next-slot", json={"filters": [{"count": 1}], "duration_hours": 1})
    assert r.status_code in (400, 401)
