"""Energy per reservation (issue 17): the trapezoid rule against samples worked out by hand; a
running reservation measured on read through the agent's API; the total written into the
reservation when it ends, so purging the samples (monitor retention) leaves it; and Manage, the
users' API and pisctl's details showing it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from helpers.agent_helpers import headers
from piseduce.agent import energy, lifecycle, monitor
from piseduce.agent.models import Reservation, Sample
from piseduce.db import write_session

T0 = dt.datetime(2030, 1, 1, 10, 0, tzinfo=dt.UTC)
ALICE = headers("alice@example.org")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_the_trapezoid_rule_against_known_samples() -> None:
    assert energy.integrate([]) is None
    # 5 W steady, a sample every 10 minutes for an hour: 5 Wh, mean 5 W.
    steady = energy.integrate([(at(600 * i), 5.0) for i in range(7)])
    assert steady is not None and (steady.wh, steady.mean_w, steady.peak_w, steady.samples) == (
        5.0,
        5.0,
        5.0,
        7,
    )
    # A ramp 0 -> 10 W over an hour, two samples: the trapezoid is exact, 5 Wh.
    ramp = energy.integrate([(at(0), 0.0), (at(3600), 10.0)])
    assert ramp is not None and ramp.wh == 5.0 and ramp.mean_w == 5.0 and ramp.peak_w == 10.0
    # Irregular samples: 2 W, 4 W a minute later, 4 W at 3 min, 6 W at 60 min.
    # (2+4)/2*60 + 4*120 + (4+6)/2*3420 = 180 + 480 + 17100 = 17760 J = 4.9333 Wh over 3600 s.
    odd = energy.integrate([(at(0), 2.0), (at(60), 4.0), (at(180), 4.0), (at(3600), 6.0)])
    assert odd is not None and odd.wh == round(17760 / 3600, 4) and odd.mean_w == round(17760 / 3600, 3)
    assert odd.peak_w == 6.0 and odd.seconds == 3600
    # One sample: no time to integrate over; its power is the mean and the peak.
    one = energy.integrate([(at(0), 3.5)])
    assert one is not None and (one.wh, one.mean_w, one.peak_w) == (0.0, 3.5, 3.5)


def put_samples(sessions: Any, node: str, rows: list[tuple[dt.datetime, float]]) -> None:
    with write_session(sessions) as s:
        s.add_all(Sample(time=t, kind="power", subject=node, value=w) for t, w in rows)
        # Another node's and another kind's samples never count.
        s.add_all(Sample(time=t, kind="power", subject="pi-9", value=99.0) for t, _ in rows)
        s.add_all(Sample(time=t, kind="temperature", subject=node, value=55.0) for t, _ in rows)


async def test_measured_while_it_runs_and_kept_after_the_samples_are_purged(
    client: httpx.AsyncClient, nodes: list[str], agent_app: Any
) -> None:
    sessions = agent_app.state.agent.sessions
    r = await client.post(
        "/api/reservations",
        json={"filters": [{"nodes": ["pi-2"]}], "start": "now", "duration_hours": 2},
        headers=ALICE,
    )
    assert r.status_code == 201, r.text
    rid = r.json()["reservations"][0]["id"]
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(hours=1)
    with write_session(sessions) as s:  # as if it began an hour ago and was deployed since
        s.execute(
            update(Reservation)
            .where(Reservation.id == rid)
            .values(start=start, end=start + dt.timedelta(hours=2), status="deployed")
        )
    # 4 W for the first half hour, then 6 W (and one sample before it began: not its own).
    samples = [(start + dt.timedelta(minutes=m), 4.0 if m <= 30 else 6.0) for m in range(0, 60, 5)]
    put_samples(sessions, "pi-2", [(start - dt.timedelta(minutes=5), 50.0), *samples])
    expected = energy.integrate(samples)
    assert expected is not None

    got = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()["energy"]
    assert got["wh"] == expected.wh and got["peak_w"] == 6.0 and got["final"] is False, got
    listed = (await client.get("/api/reservations", headers=ALICE)).json()
    assert next(x for x in listed if x["id"] == rid)["energy"]["wh"] == expected.wh
    # Bob cannot read it at all.
    assert (
        await client.get(f"/api/reservations/{rid}", headers=headers("bob@example.org"))
    ).status_code == 404

    # Destroyed: when the engine finishes the wipe (the same move as here), the total is written
    # into the reservation as it ends...
    r = await client.post(f"/api/reservations/{rid}/destroy", headers=ALICE)
    assert r.status_code == 202, r.text
    with write_session(sessions) as s:
        row = s.get(Reservation, rid)
        assert row is not None and row.status == "destroying"
        lifecycle.move(row, lifecycle.Trigger.FINISH)
    ended = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert ended["status"] == "ended", ended
    assert ended["energy"] == {**got, "final": True}
    # ...so the samples' retention dropping every sample leaves it whole.
    assert monitor.purge(sessions, dt.datetime.now(dt.UTC) + dt.timedelta(days=1)) > 0
    again = (await client.get(f"/api/reservations/{rid}", headers=ALICE)).json()
    assert again["energy"] == ended["energy"]
    listed = (await client.get("/api/reservations?status=ended", headers=ALICE)).json()
    assert next(x for x in listed if x["id"] == rid)["energy"]["final"] is True
    # A reservation of an unsampled node (a Grid'5000 server, an IoT-LAB board) has none.
    r = await client.post(
        "/api/reservations",
        json={"filters": [{"nodes": ["pi-3"]}], "start": "now", "duration_hours": 1},
        headers=ALICE,
    )
    other = (await client.get(f"/api/reservations/{r.json()['reservations'][0]['id']}", headers=ALICE)).json()
    assert other["energy"] is None


@pytest.mark.usefixtures("fast_argon2")
def test_manage_the_users_api_and_pisctl_show_it(tmp_path: Any) -> None:
    from helpers.api_helpers import API, make_token
    from helpers.webui_fixtures import (
        AgentProcess,
        add_user,
        book_on,
        register_agent,
        webui_client,
        write_webui_config,
    )
    from piseduce.api_models import ReservationOut
    from piseduce.client.cli.booking import details
    from piseduce.db import make_engine, session_factory

    cfg = write_webui_config(tmp_path / "webui")
    add_user(cfg, "alice@example.org", "alice-password")
    agent = AgentProcess(tmp_path / "rpi-lab", nodes=2, executor=False)
    try:
        register_agent(cfg, "rpi-lab", agent.port, "raspberry")
        (rid,) = book_on(agent, "alice@example.org", ["pi-1"], hours=2, bin="watts")
        engine = make_engine(f"sqlite:///{agent.folder / 'agent.db'}")
        sessions = session_factory(engine)
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
        with write_session(sessions) as s:
            s.execute(update(Reservation).where(Reservation.id == rid).values(start=start, status="deployed"))
        put_samples(sessions, "pi-1", [(start + dt.timedelta(minutes=m), 5.0) for m in (0, 10, 20, 30)])
        engine.dispose()
        with webui_client(cfg) as b:
            b.login("alice@example.org", "alice-password")
            page = b.get("/manage/bins").text
            assert "Energy so far: 2.50 Wh · mean 5.0 W · peak 5.0 W" in page, page
            token = make_token(cfg, "alice@example.org")
            r = b.c.get(f"{API}/reservations/rpi-lab/{rid}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert r.json()["energy"]["wh"] == 2.5 and r.json()["energy"]["final"] is False
            lines = dict(details(ReservationOut.model_validate(r.json())))
            assert lines["energy"] == "2.50 Wh so far (mean 5.0 W, peak 5.0 W)"
    finally:
        agent.stop()
