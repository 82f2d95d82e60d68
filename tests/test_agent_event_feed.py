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
from sqlalchemy import func, select

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


def _feed_of(sessions: Any) -> list[Any]:
    from types import SimpleNamespace

    from piseduce.agent.api.events import _feed

    return list(_feed(SimpleNamespace(sessions=sessions), 0, 1000).events)  # type: ignore[arg-type]


async def test_kinds_are_written_with_the_events_and_old_events_keep_their_text_reading(
    tmp_path: Path,
) -> None:
    """An event written before migration 0008 has no kind: the feed reads its sentence. Events
    written since carry their kind: a driver's sentence that merely reads like a notice ("deploy
    finished", "... → broken by ...") no longer tells anybody anything, and the engine's real
    notices keep their kind (a failed deployment, an ended slot)."""
    from alembic import command
    from sqlalchemy import text

    from piseduce.agent.actions import add_event
    from piseduce.agent.models import Reservation
    from piseduce.db import alembic_config, make_engine, session_factory

    url = sqlite_url(tmp_path)
    command.upgrade(alembic_config("agent", url), "0007_executor_presence")
    old_engine = make_engine(url)
    # nodes and reservations are as they were at 0007: the ORM writes them; the event is raw SQL
    old_sessions = session_factory(old_engine)
    add_node(old_sessions, "old")
    old_rid = add_reservation(old_sessions, "old", status="ended")
    with old_engine.begin() as c:
        c.execute(
            text("INSERT INTO events (reservation_id, action_id, node_name, time, level, step, message) "
                 "VALUES (:r, NULL, 'old', :t, 'info', '', :m)"),
            {"r": old_rid, "t": utcnow(), "m": "reservation ended (this node type has nothing to destroy)"},
        )
    old_engine.dispose()

    engine, sessions = migrated(url)
    try:
        with sessions() as s:
            assert s.scalar(select(Event.kind).where(Event.id == 1)) is None
        assert [(e.id, e.kind) for e in _feed_of(sessions)] == [(1, EventKind.SLOT_ENDED)]

        add_node(sessions, "pi")
        rid = add_reservation(sessions, "pi", status="deploying")
        with sessions() as s:
            r = s.get(Reservation, rid)
            a = Action(reservation_id=rid, process="deploy", args={})
            s.add(a)
            s.flush()
            add_event(s, r, "deploy finished", action=a)  # e.g. a driver's own log line
            add_event(s, r, "node pi-9: available → broken by the firmware", action=a)
            add_event(s, r, f"destroy requested by {ROOT}", action=a, actor=ROOT)
            add_event(s, r, f"reboot requested by {ALICE}", action=a, actor=ALICE)
            s.commit()
        new = {e.message: e for e in _feed_of(sessions) if e.id > 1}
        assert new["deploy finished"].kind == EventKind.OTHER
        assert new["node pi-9: available → broken by the firmware"].kind == EventKind.OTHER
        admin = new[f"destroy requested by {ROOT}"]
        assert admin.kind == EventKind.ADMIN_ACTION and admin.actor == ROOT and admin.users == [ALICE]
        assert new[f"reboot requested by {ALICE}"].kind == EventKind.OTHER

        # the engine's own notices, through the executor: kinds written, not read
        add_node(sessions, "bad", behavior="raise", behavior_step="install")
        failing = add_reservation(sessions, "bad")
        ending = add_reservation(sessions, "pi", status="deployed", start=utcnow() - dt.timedelta(hours=2))
        config = load_engine_config(write_config(tmp_path, url))
        ex = Executor(config, sessions, FakeDriver(config, sessions), "ex-1")
        await ex.tick()
        await ex.drain()
        await ex.shutdown()
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(Event).where(Event.kind.is_(None))) == 1
        kinds = {(e.reservation_id, e.kind) for e in _feed_of(sessions)}
        assert (failing, EventKind.DEPLOY_FAILED) in kinds and (ending, EventKind.SLOT_ENDED) in kinds
    finally:
        engine.dispose()
