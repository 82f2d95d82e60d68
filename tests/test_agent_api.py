"""The agent API through an ASGI client, with the fake driver (DESIGN §5.1, §5.2)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from helpers.agent_helpers import ADMIN, headers, node_body
from helpers.constants import TOKEN
from helpers.fake_driver import FakeDriver
from piseduce.agent.drivers.base import (
    BusyInterval,
    CredentialsRequired,
    NodeSpec,
    ReservationView,
)
from piseduce.agent.models import Action, Event, Node, Reservation
from piseduce.protocol import Schedule

ALICE = headers("alice@example.org")
BOB = headers("bob@example.org")


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def soon(hours: float = 1) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=hours)


async def book(client: httpx.AsyncClient, h: dict[str, str] = ALICE, **body: Any) -> httpx.Response:
    body.setdefault("duration_hours", 1)
    return await client.post("/api/reservations", json=body, headers=h)


def sessions(app: Any) -> Any:
    return app.state.agent.sessions


def count_reservations(app: Any, *statuses: str) -> int:
    with sessions(app)() as s:
        q = select(func.count()).select_from(Reservation)
        if statuses:
            q = q.where(Reservation.status.in_(statuses))
        return int(s.scalar(q) or 0)


def set_reservation(app: Any, rid: int, **values: Any) -> None:
    with sessions(app)() as s, s.begin():
        r = s.get(Reservation, rid)
        for k, v in values.items():
            setattr(r, k, v)


def set_node_attrs(app: Any, name: str, **attrs: Any) -> None:
    with sessions(app)() as s, s.begin():
        n = s.get(Node, name)
        n.attrs = {**n.attrs, **attrs}


# ---------------------------------------------------------------- auth


async def test_health_needs_no_auth_and_info_does(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/health")).json() == {"status": "ok"}
    r = await client.get("/api/info")
    assert r.status_code == 401 and "detail" in r.json()
    info = (await client.get("/api/info", headers=ALICE)).json()
    assert info["node_type"] == "raspberry" and info["version"]


@pytest.mark.parametrize(
    ("hdrs", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-123456", "X-Piseduce-User": "a@b.c"}, 401),
        ({"Authorization": f"Basic {TOKEN}", "X-Piseduce-User": "a@b.c"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 400),
        ({"Authorization": f"Bearer {TOKEN}", "X-Piseduce-User": "not an email"}, 400),
        ({"Authorization": f"Bearer {TOKEN}", "X-Piseduce-User": "a@b.c", "X-Piseduce-Role": "root"}, 400),
    ],
)
async def test_auth_errors(client: httpx.AsyncClient, hdrs: dict[str, str], status: int) -> None:
    r = await client.get("/api/nodes", headers=hdrs)
    assert r.status_code == status
    assert isinstance(r.json()["detail"], str)


async def test_admin_routes_need_admin_role(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/admin/nodes", json=node_body("pi-9"), headers=ALICE)
    assert r.status_code == 403
    assert (await client.get("/api/admin/nodes", headers=ALICE)).status_code == 403
    assert (await client.get("/api/admin/nodes", headers=ADMIN)).json() == []


# ---------------------------------------------------------------- nodes and booking


async def test_nodes_listed(client: httpx.AsyncClient, nodes: list[str]) -> None:
    got = (await client.get("/api/nodes", headers=ALICE)).json()
    assert [n["name"] for n in got] == nodes
    assert got[0]["properties"] == {"memory_gb": 4, "model": "RPI4B"} and got[0]["status"] == "available"


async def test_book_by_names(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    r = await book(client, filters=[{"nodes": ["pi-2", "pi-5"]}], bin="exp 1")
    assert r.status_code == 201, r.text
    rs = r.json()["reservations"]
    assert sorted(x["node"] for x in rs) == ["pi-2", "pi-5"]
    assert all(
        x["status"] == "configuring" and x["owner"] == "alice@example.org" and x["bin"] == "exp 1" for x in rs
    )
    assert all("deploy" in x["actions"] for x in rs)
    with sessions(agent_app)() as s:
        events = s.scalars(select(Event.message).where(Event.reservation_id == rs[0]["id"])).all()
        r0 = s.get(Reservation, rs[0]["id"])
        assert r0.driver_state.get("booked_at")  # on_booked's update is stored
    assert any("booked by alice@example.org" in m for m in events)


async def test_book_by_properties_case_insensitive_and_ranges(
    client: httpx.AsyncClient, nodes: list[str]
) -> None:
    r = await book(client, filters=[{"count": 2, "properties": {"model": "rpi4b"}}])
    assert r.status_code == 201, r.text
    assert [x["node"] for x in r.json()["reservations"]] == ["pi-1", "pi-2"]
    r = await book(client, filters=[{"count": 2, "properties": {"memory_gb": {"max": 2}}}])
    assert [x["node"] for x in r.json()["reservations"]] == ["pi-5", "pi-6"]
    r = await book(client, filters=[{"count": 1, "properties": {"memory_gb": {"min": 3}, "model": "RPI4B"}}])
    assert [x["node"] for x in r.json()["reservations"]] == ["pi-3"]


async def test_all_or_nothing(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    r = await book(
        client,
        filters=[
            {"count": 2, "properties": {"model": "RPI4B"}},
            {"count": 3, "properties": {"model": "RPI3B+"}},
        ],
    )
    assert r.status_code == 409
    assert "only 2 of 3 nodes matching model=RPI3B+" in r.json()["detail"]
    assert count_reservations(agent_app) == 0
    r = await book(client, filters=[{"nodes": ["pi-1"]}, {"count": 4, "properties": {"model": "RPI4B"}}])
    assert r.status_code == 409 and "only 3 of 4" in r.json()["detail"]
    assert count_reservations(agent_app) == 0


async def test_named_node_busy_and_turnaround_gap(client: httpx.AsyncClient, nodes: list[str]) -> None:
    t0 = soon(3)
    assert (await book(client, filters=[{"nodes": ["pi-1"]}], start=iso(t0))).status_code == 201
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 + dt.timedelta(minutes=30)))
    assert r.status_code == 409 and "pi-1" in r.json()["detail"]
    # Right after the end, within the 10-minute turnaround gap: refused; after it: accepted.
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 + dt.timedelta(minutes=65)))
    assert r.status_code == 409 and "turnaround" in r.json()["detail"]
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 + dt.timedelta(minutes=70)))
    assert r.status_code == 201
    # And before it: the new booking's own gap must end before the existing start.
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 - dt.timedelta(minutes=65)))
    assert r.status_code == 409
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 - dt.timedelta(minutes=70)))
    assert r.status_code == 201


async def test_a_conflict_quotes_the_booking_it_collides_with(
    client: httpx.AsyncClient, nodes: list[str]
) -> None:
    from piseduce.agent.booking import fmt

    t0 = soon(3).replace(minute=0, second=0)
    r = await book(client, filters=[{"nodes": ["pi-1"]}], start=iso(t0), duration_hours=2)
    assert r.status_code == 201
    asked = t0 + dt.timedelta(minutes=30)
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(asked), duration_hours=3)
    detail = r.json()["detail"]
    assert r.status_code == 409
    # Alice's booking, with its own window and the turnaround kept after it; not Bob's request.
    alices = f"pi-1 (booked from {fmt(t0)} to {fmt(t0 + dt.timedelta(hours=2))}, then kept 10 min"
    assert alices in detail, detail
    assert fmt(asked) not in detail, detail
    # A request that only collides through its own turnaround gap says so.
    r = await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 - dt.timedelta(minutes=65)))
    assert r.status_code == 409 and "keeps its node 10 min after its end" in r.json()["detail"]
    # A count that cannot be served names the taken nodes and their bookings.
    r = await book(client, filters=[{"nodes": ["pi-2", "pi-3", "pi-4"]}], start=iso(t0))
    assert r.status_code == 201
    r = await book(client, BOB, filters=[{"count": 1, "properties": {"model": "RPI4B"}}], start=iso(asked))
    detail = r.json()["detail"]
    assert r.status_code == 409 and "only 0 of 1" in detail
    assert f"pi-3 (booked from {fmt(t0)} to" in detail, detail


async def test_count_skips_busy_nodes(client: httpx.AsyncClient, nodes: list[str]) -> None:
    assert (await book(client, filters=[{"nodes": ["pi-1", "pi-3"]}])).status_code == 201
    r = await book(client, BOB, filters=[{"count": 2, "properties": {"model": "RPI4B"}}])
    assert [x["node"] for x in r.json()["reservations"]] == ["pi-2", "pi-4"]
    r = await book(client, BOB, filters=[{"count": 1, "properties": {"model": "RPI4B"}}])
    assert r.status_code == 409 and "only 0 of 1" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"filters": [{"nodes": ["pi-1"]}], "duration_hours": 73}, 422, "maximum"),
        (
            {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "2001-01-01T00:00:00Z"},
            422,
            "past",
        ),
        (
            {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "2999-01-01T00:00:00Z"},
            422,
            "ahead",
        ),
        (
            {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "2030-01-01T00:00:00"},
            422,
            "time zone",
        ),
        # Times with no UTC equivalent (year 1 east of Greenwich, year 9999 west of it).
        (
            {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "0001-01-01T00:00:00+00:01"},
            422,
            "out of range",
        ),
        (
            {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "9999-12-31T23:59:00-01:00"},
            422,
            "out of range",
        ),
        ({"filters": [{"nodes": ["nope"]}], "duration_hours": 1}, 422, "unknown node"),
        ({"filters": [{"nodes": ["pi-1"]}, {"nodes": ["pi-1"]}], "duration_hours": 1}, 422, "two filters"),
    ],
)
async def test_booking_limits(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any, body: dict[str, Any], status: int, words: str
) -> None:
    r = await client.post("/api/reservations", json=body, headers=ALICE)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])
    assert count_reservations(agent_app) == 0


async def test_start_now_and_a_bit_in_the_past(client: httpx.AsyncClient, nodes: list[str]) -> None:
    r = await book(client, filters=[{"nodes": ["pi-1"]}], start="now")
    start = dt.datetime.fromisoformat(r.json()["reservations"][0]["start"])
    assert abs((start - dt.datetime.now(dt.UTC)).total_seconds()) < 30
    # A start two minutes ago (clock skew, a slow form) is accepted.
    r = await book(client, filters=[{"nodes": ["pi-2"]}], start=iso(soon(-2 / 60)))
    assert r.status_code == 201


async def test_nodes_per_user_limit(make_agent_config: Any) -> None:
    from piseduce.agent.app import create_app

    app = create_app(make_agent_config(max_nodes_per_user=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        for i in range(1, 6):
            await c.post("/api/admin/nodes", json=node_body(f"pi-{i}"), headers=ADMIN)
        assert (await book(c, filters=[{"count": 2, "properties": {}}])).status_code == 201
        r = await book(c, filters=[{"count": 2, "properties": {}}])
        assert r.status_code == 409 and "allows 3 per user" in r.json()["detail"]
        assert (await book(c, filters=[{"count": 1, "properties": {}}])).status_code == 201
        # Another user has their own quota; a later window is counted apart.
        assert (await book(c, BOB, filters=[{"count": 2, "properties": {}}])).status_code == 201
        later = iso(soon(5))
        assert (await book(c, filters=[{"count": 3, "properties": {}}], start=later)).status_code == 201
    app.state.agent.engine.dispose()


async def test_unavailable_and_removed_nodes_not_bookable(
    client: httpx.AsyncClient, nodes: list[str]
) -> None:
    r = await client.patch("/api/admin/nodes/pi-1", json={"status": "maintenance"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "maintenance"
    r = await book(client, filters=[{"nodes": ["pi-1"]}])
    assert r.status_code == 409 and "maintenance" in r.json()["detail"]
    r = await book(client, filters=[{"count": 4, "properties": {"model": "RPI4B"}}])
    assert r.status_code == 409
    assert (await client.delete("/api/admin/nodes/pi-2", headers=ADMIN)).status_code == 200
    assert "pi-2" not in [n["name"] for n in (await client.get("/api/nodes", headers=ALICE)).json()]
    r = await book(client, filters=[{"nodes": ["pi-2"]}])
    assert r.status_code == 422


async def test_booking_refused_by_driver_is_rolled_back(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any
) -> None:
    set_node_attrs(agent_app, "pi-2", refuse_booking=True)
    r = await book(client, filters=[{"nodes": ["pi-1", "pi-2"]}])
    assert r.status_code == 409 and "remote side refused pi-2" in r.json()["detail"]
    assert count_reservations(agent_app, "configuring") == 0
    assert count_reservations(agent_app, "cancelled") == 2
    # The nodes are free again.
    assert (await book(client, filters=[{"nodes": ["pi-1"]}])).status_code == 201


# ---------------------------------------------------------------- reading, ownership


async def test_ownership(client: httpx.AsyncClient, nodes: list[str]) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    await book(client, BOB, filters=[{"nodes": ["pi-2"]}])
    assert (await client.get(f"/api/reservations/{rid}", headers=BOB)).status_code == 404
    for action in ("destroy", "reboot", "extend", "deploy", "form"):
        method = client.get if action == "form" else client.post
        kwargs: dict[str, Any] = (
            {} if action == "form" else {"json": {"environment": "tiny"} if action == "deploy" else {}}
        )
        r = await method(f"/api/reservations/{rid}/{action}", headers=BOB, **kwargs)
        assert r.status_code == 404, (action, r.text)
    mine = (await client.get("/api/reservations", headers=BOB)).json()
    assert [x["node"] for x in mine] == ["pi-2"]
    assert (await client.get("/api/reservations?all=true", headers=BOB)).status_code == 403
    everyone = (await client.get("/api/reservations?all=true", headers=ADMIN)).json()
    assert sorted(x["node"] for x in everyone) == ["pi-1", "pi-2"]
    assert (await client.get(f"/api/reservations/{rid}", headers=ADMIN)).status_code == 200
    active = (await client.get("/api/reservations?status=active", headers=ALICE)).json()
    assert len(active) == 1
    assert (await client.get("/api/reservations?status=ended", headers=ALICE)).json() == []


async def test_password_only_for_owner(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    set_reservation(agent_app, rid, params={"environment": "tiny", "os_password": "s3cret-pw"})
    own = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert own["params"]["os_password"] == "s3cret-pw"
    other = (await client.get(f"/api/reservations/{rid}", headers=ADMIN)).json()
    assert "os_password" not in other["params"] and other["params"]["environment"] == "tiny"
    listed = (await client.get("/api/reservations?all=true", headers=ADMIN)).json()
    assert "s3cret-pw" not in str(listed)


async def test_schedule_hides_other_owners(client: httpx.AsyncClient, nodes: list[str]) -> None:
    await book(client, filters=[{"nodes": ["pi-1"]}])
    await book(client, BOB, filters=[{"nodes": ["pi-2"]}])
    params = {"start": iso(soon(-1)), "end": iso(soon(47))}
    got = (await client.get("/api/schedule", params=params, headers=ALICE)).json()
    # Only the nodes with a slot are listed (the node list is GET /api/nodes).
    assert set(got["nodes"]) == {"pi-1", "pi-2"} and set(nodes) > {"pi-1", "pi-2"}
    mine, theirs = got["nodes"]["pi-1"][0], got["nodes"]["pi-2"][0]
    assert mine["owner"] == "alice@example.org" and mine["mine"] is True
    # Someone else's slot is its start and end: the protocol's defaults say the rest.
    assert set(theirs) == {"start", "end"}
    seen = Schedule.model_validate(got).nodes["pi-2"][0]
    assert seen.owner is None and seen.mine is False and seen.reservation_id is None
    admin = (await client.get("/api/schedule", params=params, headers=ADMIN)).json()
    assert admin["nodes"]["pi-2"][0]["owner"] == "bob@example.org"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"start": "2030-01-01T00:00:00Z"},
        {"start": "2030-01-01T00:00:00Z", "end": "2030-03-01T00:00:00Z"},
        {"start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"},
        {"start": "yesterday", "end": "2030-01-01T00:00:00Z"},
        {"start": "0001-01-01T00:00:00Z", "end": "0001-01-02T00:00:00Z"},
        {"start": "0001-01-01T00:00:00+00:01", "end": "2000-01-01T00:00:00Z"},
        {"start": "2030-01-01T00:00:00Z", "end": "9999-12-31T23:59:00-01:00"},
    ],
)
async def test_schedule_bad_windows(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await client.get("/api/schedule", params=params, headers=ALICE)
    assert r.status_code == 422 and "detail" in r.json()


# ---------------------------------------------------------------- deploy


async def test_deploy_form_and_deploy(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    form = (await client.get(f"/api/reservations/{rid}/form", headers=ALICE)).json()
    assert [f["name"] for f in form] == ["environment", "ssh_keys"]
    r = await client.post(f"/api/reservations/{rid}/deploy", json={"environment": "huge"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["detail"].startswith("environment:")
    assert (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()["status"] == "configuring"
    body = {"environment": "tiny", "ssh_keys": ["ssh-ed25519 AAAA test"], "bin": "run-2"}
    r = await client.post(f"/api/reservations/{rid}/deploy", json=body, headers=ALICE)
    assert r.status_code == 202 and r.json()["status"] == "scheduled"
    got = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert got["status"] == "scheduled" and got["bin"] == "run-2"
    assert got["params"] == {"environment": "tiny", "ssh_keys": ["ssh-ed25519 AAAA test"]}
    assert any("deployment of tiny" in e["message"] for e in got["events"])
    r = await client.post(f"/api/reservations/{rid}/deploy", json=body, headers=ALICE)
    assert r.status_code == 409
    set_reservation(agent_app, rid, status="deployed")
    r = await client.post(f"/api/reservations/{rid}/deploy", json=body, headers=ALICE)
    assert r.status_code == 409 and "redeploy" in r.json()["detail"]


# ---------------------------------------------------------------- actions


async def test_actions_follow_the_status(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    for action in ("reboot", "redeploy", "bootfiles"):
        r = await client.post(f"/api/reservations/{rid}/{action}", headers=ALICE)
        assert r.status_code == 409 and "configuring" in r.json()["detail"], action
    set_reservation(agent_app, rid, status="deployed", params={"environment": "tiny"})
    got = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert {"reboot", "redeploy", "bootfiles", "destroy", "extend"} <= set(got["actions"])
    r = await client.post(f"/api/reservations/{rid}/reboot", headers=ALICE)
    assert r.status_code == 202 and r.json()["process"] == "reboot"
    got = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert got["process"] == "reboot" and got["step_count"] == 1 and got["step_label"] == "power cycle"
    # One open action at a time; the status now follows the process.
    set_reservation(agent_app, rid, status="deployed")
    r = await client.post(f"/api/reservations/{rid}/redeploy", headers=ALICE)
    assert r.status_code == 409 and "busy with 'reboot'" in r.json()["detail"]
    # destroy supersedes it.
    r = await client.post(f"/api/reservations/{rid}/destroy", headers=ALICE)
    assert r.status_code == 202 and r.json()["status"] == "destroying"
    with sessions(agent_app)() as s:
        acts = s.execute(
            select(Action.process, Action.status).where(Action.reservation_id == rid).order_by(Action.id)
        ).all()
    assert [tuple(a) for a in acts] == [("reboot", "cancelled"), ("destroy", "pending")]
    r = await client.post(f"/api/reservations/{rid}/destroy", headers=ALICE)
    assert r.status_code == 409 and "already being destroyed" in r.json()["detail"]
    set_reservation(agent_app, rid, status="ended")
    for action in ("destroy", "reboot", "extend"):
        r = await client.post(f"/api/reservations/{rid}/{action}", headers=ALICE)
        assert r.status_code == 409, action


async def test_destroy_before_anything_ran_cancels(client: httpx.AsyncClient, nodes: list[str]) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    r = await client.post(f"/api/reservations/{rid}/destroy", headers=ALICE)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert (await book(client, BOB, filters=[{"nodes": ["pi-1"]}])).status_code == 201


async def test_ending_one_reservation_never_touches_another(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any
) -> None:
    a = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    t_next = soon(1.5)
    b = (await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t_next))).json()["reservations"][0][
        "id"
    ]
    c = (await book(client, BOB, filters=[{"nodes": ["pi-2"]}])).json()["reservations"][0]["id"]
    set_reservation(agent_app, c, status="deployed")
    with sessions(agent_app)() as s:
        before = {
            rid: (
                s.get(Reservation, rid).status,
                s.scalar(select(func.count()).where(Event.reservation_id == rid)),
            )
            for rid in (b, c)
        }
    set_reservation(agent_app, a, status="deployed")
    assert (await client.post(f"/api/reservations/{a}/destroy", headers=ALICE)).status_code == 202
    with sessions(agent_app)() as s:
        after = {
            rid: (
                s.get(Reservation, rid).status,
                s.scalar(select(func.count()).where(Event.reservation_id == rid)),
            )
            for rid in (b, c)
        }
        open_acts = s.scalars(select(Action.reservation_id)).all()
    assert before == after
    assert open_acts == [a]


async def test_extend(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    t0 = soon(0.5)
    a = (await book(client, filters=[{"nodes": ["pi-1"]}], start=iso(t0))).json()["reservations"][0]
    await book(client, BOB, filters=[{"nodes": ["pi-1"]}], start=iso(t0 + dt.timedelta(hours=2)))
    # +1 h would end 30 min before Bob's start... but the 10-min gap still fits: accepted.
    r = await client.post(f"/api/reservations/{a['id']}/extend", json={"hours": 0.5}, headers=ALICE)
    assert r.status_code == 202, r.text
    assert dt.datetime.fromisoformat(r.json()["end"]) == t0 + dt.timedelta(hours=1.5)
    # 0 = by its own duration (1.5 h): would run into Bob's booking.
    r = await client.post(f"/api/reservations/{a['id']}/extend", json={"hours": 0}, headers=ALICE)
    assert r.status_code == 409
    assert "booked again from" in r.json()["detail"] and "at the latest" in r.json()["detail"]
    r = await client.post(f"/api/reservations/{a['id']}/extend", json={"hours": 0.5}, headers=ALICE)
    assert r.status_code == 409  # 30 min more leaves no turnaround gap
    got = (await client.get(f"/api/reservations/{a['id']}", headers=ALICE)).json()
    assert dt.datetime.fromisoformat(got["end"]) == t0 + dt.timedelta(hours=1.5)
    # Maximum duration.
    c = (await book(client, filters=[{"nodes": ["pi-2"]}], duration_hours=70)).json()["reservations"][0]
    r = await client.post(f"/api/reservations/{c['id']}/extend", json={"hours": 3}, headers=ALICE)
    assert r.status_code == 409 and "at most 72 h" in r.json()["detail"]
    assert (
        await client.post(f"/api/reservations/{c['id']}/extend", json={"hours": 2}, headers=ALICE)
    ).status_code == 202


# ---------------------------------------------------------------- bad input


BAD_BODIES: list[Any] = [
    None,
    [],
    "text",
    {},
    {"filters": [], "duration_hours": 1},
    {"filters": [{}], "duration_hours": 1},
    {"filters": [{"count": 0}], "duration_hours": 1},
    {"filters": [{"count": -3}], "duration_hours": 1},
    {"filters": [{"count": 10**12}], "duration_hours": 1},
    {"filters": [{"count": "two"}], "duration_hours": 1},
    {"filters": [{"nodes": []}], "duration_hours": 1},
    {"filters": [{"nodes": ["pi-1"], "count": 1}], "duration_hours": 1},
    {"filters": [{"nodes": ["pi-1", "pi-1"]}], "duration_hours": 1},
    {"filters": [{"nodes": ["ünïcødé-☃"]}], "duration_hours": 1},
    {"filters": [{"nodes": ["x" * 5000]}], "duration_hours": 1},
    {"filters": [{"count": 1, "properties": {"k" * 500: "v"}}], "duration_hours": 1},
    {"filters": [{"count": 1, "properties": {"model": "v" * 5000}}], "duration_hours": 1},
    {"filters": [{"count": 1, "properties": {"model": {"lt": 3}}}], "duration_hours": 1},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": -1},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 0},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1e308},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": "2h"},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "tomorrow"},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "9999-12-31T23:59:59Z"},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "start": "0001-01-01T00:00:00Z"},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "bin": "<script>"},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "bin": "b" * 500},
    {"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "unexpected": True},
    {"filters": {"nodes": ["pi-1"]}, "duration_hours": 1},
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_bad_booking_bodies_are_4xx_and_change_nothing(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any, body: Any
) -> None:
    r = await client.post("/api/reservations", json=body, headers=ALICE)
    assert 400 <= r.status_code < 500, r.text
    assert "detail" in r.json()
    assert count_reservations(agent_app) == 0


# JSON text Python reads but cannot write back (issue 11 #7): the 422 that echoes it used to be a 500.
HOSTILE_TEXTS = [
    '{"filters": [{"nodes": ["pi-1"]}], "duration_hours": NaN}',
    '{"filters": [{"nodes": ["pi-1"]}], "duration_hours": Infinity}',
    '{"filters": [{"nodes": ["pi-1"]}], "duration_hours": -Infinity}',
    '{"filters": [{"nodes": ["pi-1"]}], "duration_hours": "nan"}',
    '{"filters": [{"count": NaN}], "duration_hours": 1}',
    '{"filters": [{"count": 1, "properties": {"memory_gb": NaN}}], "duration_hours": 1}',
    '{"filters": [{"count": 1, "properties": {"memory_gb": {"min": Infinity}}}], "duration_hours": 1}',
    '{"filters": [{"nodes": ["pi-1"]}], "duration_hours": 1, "bin": "\\ud800"}',
    '{"filters": [{"nodes": ["pi-\\udfff"]}], "duration_hours": 1}',
    '{"filters": [{"count": 1, "properties": {"model": "\\ud800"}}], "duration_hours": 1}',
    '{"filters": [{"count": 1, "properties": {"\\ud800": 1}}], "duration_hours": 1}',
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
async def test_nan_infinity_and_lone_surrogates_are_422(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any, text: str
) -> None:
    json_h = {**ALICE, "content-type": "application/json"}
    r = await client.post("/api/reservations", content=text.encode(), headers=json_h)
    assert r.status_code == 422, r.text
    detail = json.dumps(r.json()["detail"])
    assert "finite" in detail or "Unicode" in detail, detail
    assert count_reservations(agent_app) == 0


async def test_hostile_values_in_the_other_bodies_are_422(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any
) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    json_h = {**ALICE, "content-type": "application/json"}
    admin_h = {**ADMIN, "content-type": "application/json"}
    cases = [
        (f"/api/reservations/{rid}/extend", '{"hours": NaN}', json_h),
        (f"/api/reservations/{rid}/extend", '{"hours": Infinity}', json_h),
        (f"/api/reservations/{rid}/deploy", '{"environment": "\\ud800"}', json_h),
        (f"/api/reservations/{rid}/deploy", '{"environment": "env-1", "free_field": NaN}', json_h),
        (f"/api/reservations/{rid}/deploy", '{"ssh_keys": ["ssh-ed25519 \\udc00"]}', json_h),
        (f"/api/reservations/{rid}/register_env", '{"name": "\\ud800"}', json_h),
        ("/api/admin/nodes", '{"name": "pi-9", "model": "\\ud800"}', admin_h),
        ("/api/admin/nodes", '{"name": "pi-9", "properties": {"cores": NaN}}', admin_h),
        ("/api/admin/nodes", '{"name": "pi-9", "port": Infinity}', admin_h),
    ]
    for path, text, h in cases:
        r = await client.post(path, content=text.encode(), headers=h)
        assert r.status_code == 422, (path, text, r.text)
    got = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert got["status"] == "configuring" and got["params"] == {}
    names = [n["name"] for n in (await client.get("/api/nodes", headers=ALICE)).json()]
    assert "pi-9" not in names


async def test_bad_paths_and_other_bodies(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any
) -> None:
    rid = (await book(client, filters=[{"nodes": ["pi-1"]}])).json()["reservations"][0]["id"]
    for path in (
        "/api/reservations/abc",
        "/api/reservations/-1",
        "/api/reservations/0",
        f"/api/reservations/{2**70}",
        "/api/reservations/1.5",
    ):
        r = await client.get(path, headers=ALICE)
        assert r.status_code == 422, path
    assert (await client.get("/api/reservations/999999", headers=ALICE)).status_code == 404
    bad_deploys: list[Any] = [
        [],
        {"ssh_keys": "not a list"},
        {"ssh_keys": ["k" * 20000]},
        {"os_password": "p" * 1000},
        {"nested": {"a": 1}},
        {**{f"f{i}": i for i in range(40)}},
        {"bin": "bad/bin"},
    ]
    for body in bad_deploys:
        r = await client.post(f"/api/reservations/{rid}/deploy", json=body, headers=ALICE)
        assert r.status_code == 422, (body, r.text)
    for body in ({"hours": -1}, {"hours": 10**9}, {"hours": "x"}, {"days": 1}):
        r = await client.post(f"/api/reservations/{rid}/extend", json=body, headers=ALICE)
        assert r.status_code == 422, body
    r = await client.post(
        "/api/reservations", content=b"{not json", headers={**ALICE, "content-type": "application/json"}
    )
    assert r.status_code == 422
    r = await client.post(
        "/api/reservations", content=b"x" * (2 << 20), headers={**ALICE, "content-type": "application/json"}
    )
    assert r.status_code == 413
    got = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert got["status"] == "configuring" and got["params"] == {}
    for path in ("/api/admin/nodes/bad%20name", "/api/admin/nodes/" + "n" * 300):
        r = await client.patch(path, json={"status": "broken"}, headers=ADMIN)
        assert r.status_code == 422, path
    r = await client.patch("/api/admin/nodes/pi-1", json={"status": "exploded"}, headers=ADMIN)
    assert r.status_code == 422


# ---------------------------------------------------------------- admin nodes


async def test_admin_nodes(client: httpx.AsyncClient, nodes: list[str], agent_app: Any) -> None:
    r = await client.post("/api/admin/nodes", json=node_body("pi-1"), headers=ADMIN)
    assert r.status_code == 409
    body = {
        "name": "pi-7",
        "ip": "10.0.0.7",
        "model": "RPI4B",
        "serial": "abc12345",
        "port": 7,
        "ssh_port": 2207,
        "mac": "dc:a6:32:00:00:07",
        "properties": {"site": "lab"},
    }
    r = await client.post("/api/admin/nodes", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["properties"] == {"site": "lab", "model": "RPI4B"}
    assert out["attrs"] == {"ssh_port": 2207, "port": 7, "serial": "abc12345", "mac": "dc:a6:32:00:00:07"}
    r = await client.post("/api/admin/nodes", json={**body, "name": "pi-8", "switch": "nope"}, headers=ADMIN)
    assert r.status_code == 422 and "switch" in r.json()["detail"]
    set_node_attrs(agent_app, "pi-7", snmp_community="private", password="x")
    listed = {n["name"]: n for n in (await client.get("/api/admin/nodes", headers=ADMIN)).json()}
    assert "password" not in listed["pi-7"]["attrs"] and "snmp_community" not in listed["pi-7"]["attrs"]
    await book(client, filters=[{"nodes": ["pi-7"]}])
    r = await client.delete("/api/admin/nodes/pi-7", headers=ADMIN)
    assert r.status_code == 409 and "active reservation" in r.json()["detail"]
    r = await client.delete("/api/admin/nodes/pi-6", headers=ADMIN)
    assert r.status_code == 200 and r.json()["result"] == "deleted"
    assert (await client.delete("/api/admin/nodes/pi-6", headers=ADMIN)).status_code == 404
    r = await client.post("/api/admin/nodes/pi-5/status", json={"status": "broken"}, headers=ADMIN)
    assert r.json()["status"] == "broken"
    acts = (await client.get("/api/admin/actions", headers=ADMIN)).json()
    assert acts == []


async def test_metrics(client: httpx.AsyncClient, nodes: list[str]) -> None:
    await book(client, filters=[{"nodes": ["pi-1"]}])
    text = (await client.get("/metrics", headers=ADMIN)).text
    assert 'piseduce_agent_reservations{status="configuring"} 1.0' in text
    assert 'piseduce_agent_nodes{status="available"} 6.0' in text
    assert 'route="/api/reservations"' in text


SPEC_PATHS = ("/openapi.json", "/docs", "/redoc")


async def test_metrics_and_docs_need_the_token(client: httpx.AsyncClient) -> None:
    # They tell the agent's version, routes, node counts and traffic: not for anyone (issue 11 #9).
    for path in ("/metrics", *SPEC_PATHS):
        for h in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": "Basic eDp5"}):
            r = await client.get(path, headers=h)
            assert r.status_code == 401, (path, h, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
        r = await client.get(path, headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200, path
    # The web UI's probe stays open.
    assert (await client.get("/api/health")).json() == {"status": "ok"}


async def test_metrics_and_docs_open_when_configured(make_agent_config: Any) -> None:
    from piseduce.agent.app import create_app
    from piseduce.config import ConfigError

    for endpoints, opened in ((["metrics"], {"/metrics"}), (["docs"], set(SPEC_PATHS)),
                              (["metrics", "docs"], {"/metrics", *SPEC_PATHS})):
        app = create_app(make_agent_config(open_endpoints=endpoints))
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
                for path in ("/metrics", *SPEC_PATHS):
                    want = 200 if path in opened else 401
                    assert (await c.get(path)).status_code == want, (endpoints, path)
                # Everything else still needs the token.
                assert (await c.get("/api/nodes", headers={"X-Piseduce-User": "a@b.c"})).status_code == 401
        finally:
            app.state.agent.engine.dispose()
    with pytest.raises(ConfigError, match="open_endpoints"):
        make_agent_config(open_endpoints=["everything"])


async def test_openapi_served(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json", headers=ADMIN)).json()
    for path in (
        "/api/health",
        "/api/nodes",
        "/api/schedule",
        "/api/reservations",
        "/api/reservations/{reservation_id}/deploy",
        "/api/reservations/{reservation_id}/extend",
        "/api/admin/nodes",
    ):
        assert path in spec["paths"], path


async def test_progress_has_one_documented_meaning(client: httpx.AsyncClient, nodes: list[str]) -> None:
    """`progress` is the whole process' percentage (what the engine stores), said in the spec."""
    spec = (await client.get("/openapi.json", headers=ADMIN)).json()
    schemas = spec["components"]["schemas"]
    for model in ("ReservationOut", "ActionOut"):
        doc = schemas[model]["properties"]["progress"].get("description", "")
        assert "whole running process" in doc and "not the running step's own percentage" in doc, (model, doc)
    assert "step_index" in schemas["ReservationOut"]["properties"]


# ---------------------------------------------------------------- credentials and remote inventory


class CredInventory:
    """The testbed's node list and calendar, as the test sets them."""

    def __init__(self, driver: CredDriver) -> None:
        self.driver = driver

    async def nodes(self, credentials: Mapping[str, str] | None) -> list[NodeSpec]:
        if self.driver.broken:
            raise ConnectionError("api.grid5000.fr unreachable")
        return list(self.driver.listed)

    async def busy(self, start: dt.datetime, end: dt.datetime, credentials: Any) -> list[BusyInterval]:
        return list(self.driver.busy)


class CredDriver(FakeDriver):
    """Like g5k: needs the user's testbed account, lists nodes from a remote inventory."""

    node_type = "g5k"
    needs_credentials = True
    listed: list[NodeSpec] = []
    busy: list[BusyInterval] = []
    seen: list[Mapping[str, str] | None] = []
    broken = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.inventory = CredInventory(self)

    async def on_booked(
        self, reservations: list[ReservationView], credentials: Mapping[str, str] | None
    ) -> dict[int, dict[str, Any]]:
        self.seen.append(credentials)
        if credentials is None:
            raise CredentialsRequired("no Grid'5000 account given")
        return {r.id: {"job": 42} for r in reservations}

    async def deploy_form(self, reservation: ReservationView, credentials: Mapping[str, str] | None) -> Any:
        if self.broken:
            raise RuntimeError("connection reset by peer")
        return await super().deploy_form(reservation, credentials)


@pytest.fixture
async def cred_client(make_agent_config: Any) -> Any:
    from piseduce.agent.app import create_app

    cfg = make_agent_config(node_type="g5k", inventory_refresh_seconds=1)
    driver = CredDriver(cfg, None)  # type: ignore[arg-type]
    driver.listed = [
        NodeSpec("grisou-1", properties={"cluster": "grisou", "cores": 16}),
        NodeSpec("grisou-2", properties={"cluster": "grisou", "cores": 16}),
    ]
    driver.busy, driver.seen = [], []
    app = create_app(cfg, driver)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        yield c, app, driver
    app.state.agent.engine.dispose()


async def test_credentials_forwarded_and_stored_encrypted(cred_client: Any) -> None:
    from piseduce.crypto import encrypt_json, load_fernet

    c, app, driver = cred_client
    fernet = load_fernet(app.state.agent.config.key_path)
    token = encrypt_json(fernet, {"user": "alice", "password": "pw"})
    r = await book(c, filters=[{"count": 1, "properties": {"cluster": "grisou"}}])
    assert r.status_code == 403 and "Grid'5000 credentials missing or refused" in r.json()["detail"]
    assert count_reservations(app, "configuring") == 0
    r = await book(
        c, {**ALICE, "X-Piseduce-Credentials": "garbage"}, filters=[{"count": 1, "properties": {}}]
    )
    assert r.status_code == 400 and "key" in r.json()["detail"]
    r = await book(
        c, {**ALICE, "X-Piseduce-Credentials": token}, filters=[{"count": 1, "properties": {"cores": 16}}]
    )
    assert r.status_code == 201, r.text
    assert driver.seen[-1] == {"user": "alice", "password": "pw"}
    rid = r.json()["reservations"][0]["id"]
    with sessions(app)() as s:
        res = s.get(Reservation, rid)
        assert res.credentials == token and res.driver_state["job"] == 42
    await c.post(f"/api/reservations/{rid}/destroy", headers=ALICE)
    with sessions(app)() as s:
        assert s.get(Reservation, rid).credentials is None


async def test_remote_inventory_and_remote_busy(cred_client: Any) -> None:
    c, app, driver = cred_client
    names = [n["name"] for n in (await c.get("/api/nodes", headers=ALICE)).json()]
    assert names == ["grisou-1", "grisou-2"]
    assert (await c.post("/api/admin/nodes", json=node_body("x-1"), headers=ADMIN)).status_code == 409
    now = dt.datetime.now(dt.UTC)
    driver.busy = [BusyInterval("grisou-1", now - dt.timedelta(hours=1), now + dt.timedelta(hours=5))]
    sched = (
        await c.get(
            "/api/schedule",
            params={"start": iso(now), "end": iso(now + dt.timedelta(hours=48))},
            headers=ALICE,
        )
    ).json()
    assert sched["nodes"]["grisou-1"][0]["reason"] == "busy outside PiSeduce"
    # The node disappears from the remote inventory: hidden and not bookable.
    driver.listed = driver.listed[:1]
    app.state.agent.inventory.synced_at = None
    names = [n["name"] for n in (await c.get("/api/nodes", headers=ALICE)).json()]
    assert names == ["grisou-1"]
    from piseduce.crypto import encrypt_json

    token = encrypt_json(app.state.agent.fernet, {"user": "alice", "password": "pw"})
    r = await book(c, {**ALICE, "X-Piseduce-Credentials": token}, filters=[{"nodes": ["grisou-2"]}])
    assert r.status_code == 422 and "unknown node" in r.json()["detail"]
    # The remote side is down: the last known nodes are served, a driver crash is a 502.
    driver.broken = True
    app.state.agent.inventory.synced_at = None
    assert [n["name"] for n in (await c.get("/api/nodes", headers=ALICE)).json()] == ["grisou-1"]
    with sessions(app)() as s, s.begin():
        s.add(
            Reservation(node_name="grisou-1", owner="alice@example.org", start=now, end=now, busy_until=now)
        )
    with sessions(app)() as s:
        rid = s.scalar(select(Reservation.id))
    r = await c.get(f"/api/reservations/{rid}/form", headers=ALICE)
    assert r.status_code == 502 and "connection reset" in r.json()["detail"]
