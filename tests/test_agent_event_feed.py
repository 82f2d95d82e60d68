"""The agents' event feed (GET /api/admin/events): each event the engine and the API write,
classified for the notifications (agent/event_kinds.py), with the users it concerns. The events
come from the real code paths (a real agent process, the executor in-process), so a changed
sentence fails here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from helpers.engine_fixtures import add_node, add_reservation, migrated, sqlite_url, write_config
from helpers.engine_fixtures import load_config as load_engine_config
from helpers.fake_driver import FakeDriver
from helpers.webui_fixtures import AgentProcess, agent_headers, book_on, deployed_on
from piseduce.agent.engine.executor import Executor
from piseduce.agent.event_kinds import classify
from piseduce.agent.models import Action, Event, utcnow
from piseduce.protocol_events import EventFeed, EventKind

ALICE, BOB, ROOT = "alice@example.org", "bob@example.org", "root@example.org"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path / "feed-agent", nodes=3)
    try:
        yield a
    finally:
        a.stop()


def feed(agent: AgentProcess, after: int = 0, **params: Any) -> EventFeed:
    r = httpx.get(
        f"{agent.url}/api/admin/events",
        params={"after": after, **params},
        headers=agent_headers(ROOT, admin=True),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return EventFeed.model_validate(r.json())


def test_the_feed_says_what_happened_and_to_whom(agent: AgentProcess) -> None:
    start = feed(agent).last_id
    rid = deployed_on(agent, ALICE, "pi-1")
    bob_rid = book_on(agent, BOB, ["pi-2"])[0]
    # An administrator cancels Bob's booking; Alice destroys nothing of anybody else.
    r = httpx.post(
        f"{agent.url}/api/reservations/{bob_rid}/destroy", headers=agent_headers(ROOT, admin=True), timeout=10
    )
    assert r.status_code == 202, r.text
    r = httpx.post(
        f"{agent.url}/api/admin/nodes/pi-1/status",
        json={"status": "broken"},
        headers=agent_headers(ROOT, admin=True),
        timeout=10,
    )
    assert r.status_code == 200, r.text

    got = feed(agent, start).events
    assert [e.id for e in got] == sorted(e.id for e in got) and got[0].id > start
    done = [e for e in got if e.kind == EventKind.DEPLOY_DONE]
    assert len(done) == 1 and done[0].users == [ALICE] and done[0].reservation_id == rid
    assert done[0].connection["ssh"].startswith("ssh ") and done[0].node == "pi-1"
    (admin_act,) = [e for e in got if e.kind == EventKind.ADMIN_ACTION]
    assert admin_act.users == [BOB] and admin_act.actor == ROOT and admin_act.reservation_id == bob_rid
    (broken,) = [e for e in got if e.kind == EventKind.NODE_BROKEN]
    assert broken.users == [ALICE] and broken.node == "pi-1" and broken.reservation_id is None
    # Alice's own deployment request is nobody's admin action.
    assert not [e for e in got if e.kind == EventKind.ADMIN_ACTION and ALICE in e.users]

    # The cursor: nothing after the last event, a page at a time.
    last = got[-1].id
    assert feed(agent, last).events == [] and feed(agent, last).last_id == last
    page = feed(agent, start, limit=2).events
    assert [e.id for e in page] == [e.id for e in got[:2]]


def test_the_feed_is_for_administrators_only(agent: AgentProcess) -> None:
    r = httpx.get(f"{agent.url}/api/admin/events", headers=agent_headers(ALICE), timeout=10)
    assert r.status_code == 403
    r = httpx.get(
        f"{agent.url}/api/admin/events",
        params={"after": -1},
        headers=agent_headers(ROOT, admin=True),
        timeout=10,
    )
    assert r.status_code == 422
    r = httpx.get(
        f"{agent.url}/api/admin/events",
        params={"limit": "x"},
        headers=agent_headers(ROOT, admin=True),
        timeout=10,
    )
    assert r.status_code == 422


async def test_a_failed_deployment_and_an_ended_slot_are_classified(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine, sessions = migrated(url)
    try:
        add_node(sessions, "bad", behavior="raise", behavior_step="install")
        add_node(sessions, "old")
        failing = add_reservation(sessions, "bad")
        ending = add_reservation(sessions, "old", status="deployed", start=utcnow() - dt.timedelta(hours=2))
        config = load_engine_config(write_config(tmp_path, url))
        ex = Executor(config, sessions, FakeDriver(config, sessions), "ex-1")
        await ex.tick()
        await ex.drain()
        await ex.shutdown()
        with sessions() as s:
            rows = s.execute(
                select(Event, Action.process)
                .outerjoin(Action, Action.id == Event.action_id)
                .order_by(Event.id)
            ).all()
            kinds = {
                (e.reservation_id, classify(e.message, e.level, p or "", "alice@example.org").kind)
                for e, p in rows
            }
            reasons = [
                e.message
                for e, p in rows
                if classify(e.message, e.level, p or "", "x").kind == EventKind.DEPLOY_FAILED
            ]
        assert (failing, EventKind.DEPLOY_FAILED) in kinds
        assert reasons and all("install broke on bad" in m for m in reasons)
        assert (ending, EventKind.SLOT_ENDED) in kinds
        assert (failing, EventKind.DEPLOY_DONE) not in kinds and (
            ending,
            EventKind.DEPLOY_FAILED,
        ) not in kinds
    finally:
        engine.dispose()
