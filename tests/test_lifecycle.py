"""The reservation lifecycle as data (agent/lifecycle.py): the table is complete and consistent, and
the API does exactly what it says: every pair it allows is accepted and leads where it says, every
pair it forbids is refused with its reason, in every status, for every route a user has."""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN, headers, node_body
from piseduce.agent import lifecycle
from piseduce.agent.api import reservations as reservations_api
from piseduce.agent.api.views import OFFERED
from piseduce.agent.drivers.base import Process, Step
from piseduce.agent.lifecycle import (
    PROCESSES,
    STATUSES,
    TRANSITIONS,
    USER_EVENTS,
    Trigger,
)
from piseduce.agent.models import ACTION_DONE, Action, Reservation
from piseduce.config import AgentConfig

ALICE = headers("alice@example.org")


# ---------------------------------------------------------------- the table itself


def test_every_pair_is_either_a_transition_or_refused_with_a_reason() -> None:
    for status in STATUSES:
        for trigger in Trigger:
            reason = lifecycle.refusal(status, trigger, 7)
            if (status, trigger) in TRANSITIONS:
                assert reason is None
                assert lifecycle.after(status, trigger) in STATUSES
            else:
                assert reason and "{" not in reason, (status, trigger, reason)
                with pytest.raises(lifecycle.Refused) as refused:
                    lifecycle.after(status, trigger, 7)
                assert refused.value.reason == reason


def test_final_statuses_allow_nothing_and_processes_end_where_the_lifecycle_says() -> None:
    for status in lifecycle.FINAL_STATUSES:
        assert [t for t in Trigger if lifecycle.allows(status, t)] == []
    for name, statuses in PROCESSES.items():
        assert lifecycle.after(statuses.running, Trigger.FINISH) == statuses.done, name
        assert lifecycle.after(statuses.running, Trigger.FAIL) == statuses.failed, name
        assert Process(name, ()).running_status == statuses.running
    with pytest.raises(ValueError, match="unknown process"):
        Process("frobnicate", ())
    # Every process a user can queue has a route and a place in the table.
    assert set(lifecycle.QUEUES.values()) == set(PROCESSES) - {"deploy"}
    assert set(lifecycle.ACTIVE_STATUSES) | set(lifecycle.FINAL_STATUSES) == set(STATUSES)


def test_the_status_filter_of_the_list_route_names_every_status() -> None:
    assert set(typing.get_args(reservations_api.StatusQuery)) == {*STATUSES, "active"}


# ---------------------------------------------------------------- the API against the table


@pytest.fixture
async def walker(  # the fake driver with every process of the lifecycle
make_agent_config: Callable[..., AgentConfig]) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    from piseduce.agent.app import create_app

    config = make_agent_config(driver="helpers.env_factory_driver:FactoryDriver", max_duration_hours=24)
    app = create_app(config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as c:
        r = await c.post("/api/admin/nodes", json=node_body("pi-1"), headers=ADMIN)
        assert r.status_code == 201, r.text
        yield app, c
    app.state.agent.engine.dispose()


def _reservation(app: Any, index: int, status: str, *, acted: bool) -> int:
    """A reservation of pi-1 in `status`, in a slot of its own (4 h apart: room to extend), with
    a deploy form stored; `acted`: an action ran on it before (so a destroy is not a cancel)."""
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1 + 4 * index)
    end = start + dt.timedelta(hours=1)
    with app.state.agent.sessions() as s, s.begin():
        r = Reservation(
            node_name="pi-1", owner="alice@example.org", bin="walk", start=start, end=end,
            busy_until=end + dt.timedelta(minutes=10), status=status, params={"environment": "tiny"},
        )
        s.add(r)
        s.flush()
        if acted:
            s.add(Action(reservation_id=r.id, process="deploy", status=ACTION_DONE, progress=100))
        return r.id


async def _ask(c: httpx.AsyncClient, rid: int, trigger: Trigger, index: int) -> httpx.Response:
    base = f"/api/reservations/{rid}"
    if trigger == Trigger.FORM:
        return await c.get(f"{base}/form", headers=ALICE)
    bodies: dict[Trigger, tuple[str, dict[str, Any] | None]] = {
        Trigger.DEPLOY: ("deploy", {"environment": "tiny"}),
        Trigger.CANCEL: ("destroy", None),
        Trigger.DESTROY: ("destroy", None),
        Trigger.EXTEND: ("extend", {"hours": 0.5}),
        Trigger.REBOOT: ("reboot", None),
        Trigger.REDEPLOY: ("redeploy", None),
        Trigger.BOOTFILES: ("bootfiles", None),
        Trigger.REGISTER_ENV: ("register_env", {"name": f"walk-{index}"}),
    }
    route, body = bodies[trigger]
    return await c.post(f"{base}/{route}", json=body, headers=ALICE)


def _status(app: Any, rid: int) -> str:
    with app.state.agent.sessions() as s:
        r = s.get(Reservation, rid)
        assert r is not None
        return r.status


async def test_the_api_refuses_exactly_the_forbidden_pairs(walker: tuple[Any, httpx.AsyncClient]) -> None:
    app, c = walker
    index = 0
    for status in STATUSES:
        for trigger in USER_EVENTS:
            index += 1
            # A destroy of a reservation nothing ran on yet is its cancellation.
            rid = _reservation(app, index, status, acted=trigger != Trigger.CANCEL)
            r = await _ask(c, rid, trigger, index)
            expected = trigger
            if trigger == Trigger.CANCEL and not lifecycle.allows(status, trigger):
                # /destroy then destroys what may be destroyed, and refuses the rest.
                expected = Trigger.DESTROY
            where = f"{trigger} in {status}: {r.status_code} {r.text}"
            if lifecycle.allows(status, expected):
                assert r.status_code in (200, 202), where
                assert _status(app, rid) == TRANSITIONS[(status, expected)], where
            else:
                assert r.status_code == 409, where
                assert r.json()["detail"] == lifecycle.refusal(status, expected, rid), where
                assert _status(app, rid) == status, where


async def test_the_actions_offered_are_what_the_lifecycle_allows(
    walker: tuple[Any, httpx.AsyncClient],
) -> None:
    app, c = walker
    for index, status in enumerate(STATUSES, start=1):
        rid = _reservation(app, index, status, acted=True)
        got = (await c.get(f"/api/reservations/{rid}", headers=ALICE)).json()["actions"]
        assert got == [t.value for t in OFFERED if lifecycle.allows(status, t)], status


def test_process_steps_need_no_statuses() -> None:
    async def run(ctx: Any) -> None:
        return None

    p = Process("destroy", (Step("wipe", run),))
    assert (p.running_status, p.done_status) == ("destroying", "ended")


async def test_a_booking_rolled_back_after_it_was_deployed_is_left_to_its_destroy(
    walker: tuple[Any, httpx.AsyncClient],
) -> None:
    """The testbed refusing a booking cancels its reservations; one that moved on meanwhile (a start
    of "now", deployed at once) is not forced to `cancelled` under its running action: the
    lifecycle refuses the rollback there, and the reservation says what to do."""
    app, _ = walker
    fresh = _reservation(app, 1, lifecycle.CONFIGURING, acted=False)
    moved = _reservation(app, 2, lifecycle.DEPLOYING, acted=True)
    reservations_api._cancel_booking(app.state.agent, [fresh, moved], "OAR refused the job")
    assert _status(app, fresh) == lifecycle.CANCELLED
    assert _status(app, moved) == lifecycle.DEPLOYING
    with app.state.agent.sessions() as s:
        from piseduce.agent.models import Event

        said = [e.message for e in s.query(Event).filter(Event.reservation_id == moved)]
    assert said == ["the testbed refused this booking (OAR refused the job): destroy it"]
