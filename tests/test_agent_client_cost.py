"""What talking to many agents costs the web UI, pinned: the costs issue 15 found and removed
must not come back unnoticed (a benchmark is never a timed test; these count instead)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.machinery
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpcore._synchronization as httpcore_sync
import httpx
import pytest

from helpers.constants import TOKEN
from helpers.webui_fixtures import (
    add_user,
    fake_agent_app,
    register_agent,
    threaded_app,
    webui_client,
    write_webui_config,
)
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui import node_lists
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agent_pools import AgentPools
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.answer_memo import VARIANTS, AnswerMemo
from piseduce.webui.database import Database
from piseduce.webui.node_lists import NodeLists
from piseduce.webui.routes.reserve import View, _lay_out, _rows, fetch_nodes


def _ssl_context_of(client: Any) -> Any:
    return client._transport._pool._ssl_context


async def test_every_agent_pool_verifies_with_one_ssl_context() -> None:
    # httpx builds a context per client otherwise (the CA store loaded anew, ~20 ms of CPU each).
    pools = AgentPools(1.0)
    try:
        a, b = pools.for_agent(1, "http://10.0.0.1:8000"), pools.for_agent(2, "http://10.0.0.2:8000")
        probe = pools.for_agent(0, "http://10.0.0.3:8000")
        assert a is not b and a is not probe
        assert _ssl_context_of(a) is _ssl_context_of(b) is _ssl_context_of(probe)
        assert _ssl_context_of(AgentPools(1.0).for_agent(1, "http://10.0.0.1:8000")) is _ssl_context_of(a)
    finally:
        await pools.close()


async def test_httpcore_knows_the_event_loop_without_searching_the_file_system(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpcore asks `import sniffio` at every lock and event it makes (several per agent call);
    # without sniffio installed each import failed after a search of every sys.path folder: 19 %
    # of the web UI's CPU on a Reserve page at 50 agents.
    searches: list[str] = []
    real = importlib.machinery.PathFinder.find_spec

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        searches.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counting)
    for _ in range(3):
        assert httpcore_sync.current_async_library() == "asyncio"
        httpcore_sync.AsyncEvent().set()
        await asyncio.sleep(0)
    assert searches == []


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[AgentClient, AgentRef]]:
    """An AgentClient talking to one in-process fake agent of 100 nodes (a 9 KiB node list)."""
    cfg = load_webui_config(write_webui_config(tmp_path, agent_timeout_seconds=30.0))
    engine = make_engine(cfg.database_url)
    client = AgentClient(cfg, Database(session_factory(engine)), crypto.load_fernet(cfg.key_path))
    agent = fake_agent_app("lab", nodes=100, delay=0)
    transport = httpx.AsyncClient(transport=httpx.ASGITransport(app=agent))
    client.pools.route_all(transport)
    ref = AgentRef(1, "lab", "agent", 80, "http://agent", TOKEN, "raspberry", "", "connected", "", False)
    try:
        yield client, ref
    finally:
        await transport.aclose()
        await client.close()
        engine.dispose()


async def test_users_share_the_checked_node_list_of_an_agent(hub: tuple[AgentClient, AgentRef]) -> None:
    # The same bytes check to the same models whoever asked: 8 users of a worker must not check
    # 50 agents' node lists 8 times over (nor one user once per page).
    client, ref = hub
    alice, bob = Identity("alice@example.org", "user"), Identity("bob@example.org", "user")
    first = await client.nodes(ref, alice)
    assert first.value is not None and len(first.value) == 100
    again, other = await client.nodes(ref, alice), await client.nodes(ref, bob)
    assert again.value is first.value and other.value is first.value
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    calendar = await client.schedule(ref, alice, start, start + dt.timedelta(days=2))
    assert calendar.value is not None
    assert (await client.schedule(ref, bob, start, start + dt.timedelta(days=2))).value is calendar.value
    later = await client.schedule(ref, bob, start, start + dt.timedelta(days=3))  # another window
    assert later.value is not None and later.value is not calendar.value


def test_the_memo_is_bounded_in_bytes_as_well_as_in_entries() -> None:
    memo = AnswerMemo(max_entries=10, max_total_bytes=5000)
    for i in range(4):
        assert memo.put(("agent", i), bytes([i]) * 2000, i) is not None
    assert len(memo) == 2 and memo.total_bytes == 4000  # the oldest went first
    assert memo.get(("agent", 0), bytes([0]) * 2000) is None
    assert memo.get(("agent", 3), bytes([3]) * 2000) is not None
    assert memo.get(("agent", 3), bytes([4]) * 2000) is None  # other bytes: decoded afresh
    assert memo.put(("agent", 9), b"x" * 100, 9) is None  # small: cheap to decode, not kept


def test_a_call_keeps_its_last_few_distinct_answers() -> None:
    # One per user whose calendar marks their own slots; the one still asked for stays.
    def body(i: int) -> bytes:
        return f"{i:02d}".encode() * 1000

    memo = AnswerMemo()
    key = ("agent", "/api/schedule")
    first = memo.put(key, body(0), 0)
    for i in range(1, VARIANTS + 3):
        memo.put(key, body(i), i)
        assert memo.get(key, body(0)) is first  # asked again each time: never the oldest
    assert len(memo) == VARIANTS and memo.total_bytes == VARIANTS * 2000
    assert memo.get(key, body(1)) is None
    found = memo.get(key, body(VARIANTS + 2))
    assert found is not None and found.data == VARIANTS + 2


async def test_a_node_list_seen_again_is_laid_out_from_the_rows_it_gave(
    hub: tuple[AgentClient, AgentRef],
) -> None:
    # Rebuilding and sorting every agent's rows at each page was a third of its CPU at 50 agents;
    # the rows are derived once per node list, and a page draws on copies of its own.
    client, ref = hub
    alice, bob = Identity("alice@example.org", "user"), Identity("bob@example.org", "user")
    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(days=1)
    zone = ZoneInfo("Europe/Paris")
    view = View([], "", 1, 30)

    async def page(who: Identity) -> Any:
        answers = await fetch_nodes(client, [ref], who, start, end)
        return answers, _lay_out(answers, start, end, start.date(), 1, zone, view)

    answers, first = await page(alice)
    again, second = await page(bob)
    every, *_ = _rows(answers)
    assert len(every) == 100 and _rows(again)[0][0] is every[0]  # the same rows, not rebuilt
    assert [r.name for r in every[:12]] == [f"n-{i}" for i in range(12)]  # natural order
    assert [r.key for r in second.rows] == [r.key for r in first.rows] == [r.key for r in every[:30]]
    assert any(r.busy for r in first.rows)
    assert all(not r.busy and not r.slots for r in every)  # the pages drew on copies
    assert not set(map(id, first.rows)) & set(map(id, every))


@dataclasses.dataclass(frozen=True)
class _Answer:
    agent: str
    ok: bool = True


async def test_a_node_list_is_asked_once_for_the_pages_of_a_few_seconds() -> None:
    lists = NodeLists(ttl=60)
    asked: list[str] = []

    async def fetch(ok: bool = True) -> _Answer:
        asked.append("x")
        await asyncio.sleep(0.01)
        return _Answer("first", ok)

    where = ("http://a:1", "token")
    # Pages at the same moment share the call in flight; each gets the answer with its own ref.
    got = await asyncio.gather(*(lists.get((1, "user"), where, f"ref{i}", fetch) for i in range(8)))
    assert len(asked) == 1 and [a.agent for a in got] == [f"ref{i}" for i in range(8)]
    assert (await lists.get((1, "user"), where, "later", fetch)).agent == "later" and len(asked) == 1
    await lists.get((1, "user"), ("http://a:2", "token"), "moved", fetch)  # the agent was edited
    assert len(asked) == 2
    await lists.get((1, "admin"), ("http://a:2", "token"), "admin", fetch)  # roles apart
    assert len(asked) == 3
    lists.forget(1)  # this worker sent it a change: every role's list goes
    await lists.get((1, "user"), ("http://a:2", "token"), "changed", fetch)
    await lists.get((1, "admin"), ("http://a:2", "token"), "changed", fetch)
    assert len(asked) == 5
    await lists.get((2, "user"), where, "b", lambda: fetch(ok=False))  # a failure is not kept
    await lists.get((2, "user"), where, "b", fetch)
    assert len(asked) == 7


async def test_a_page_that_gives_up_does_not_cancel_the_shared_call() -> None:
    lists = NodeLists(ttl=60)
    release = asyncio.Event()

    async def fetch() -> _Answer:
        await release.wait()
        return _Answer("first")

    first = asyncio.ensure_future(lists.get((1, "user"), ("h", "t"), "a", fetch))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(lists.get((1, "user"), ("h", "t"), "b", fetch))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert (await second).agent == "b"


async def test_ttl_none_is_the_module_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_lists, "TTL", 0.0)
    lists = NodeLists()
    asked: list[int] = []

    async def fetch() -> _Answer:
        asked.append(1)
        return _Answer("a")

    await lists.get((1, "user"), ("h", "t"), "a", fetch)
    await lists.get((1, "user"), ("h", "t"), "a", fetch)
    assert len(asked) == 2


def test_a_reserve_page_asks_each_agent_twice_at_most_and_users_share_the_node_lists(
    tmp_path: Path,
) -> None:
    # nodes + calendar of every agent, the nodes of credential-free agents once for a few
    # seconds; a booking sent to an agent makes this worker ask for its nodes again.
    cfg = write_webui_config(tmp_path, health_check_seconds=3600, agent_timeout_seconds=15)
    users = [f"user{i}@example.org" for i in range(3)]
    for email in users:
        add_user(cfg, email, "password-of-a-user")
    apps = [fake_agent_app(f"site{i}", nodes=30, delay=0) for i in range(2)]
    with contextlib.ExitStack() as stack:
        for i, app in enumerate(apps):
            register_agent(cfg, f"site{i}", stack.enter_context(threaded_app(app)), "raspberry")
        b = stack.enter_context(webui_client(cfg))  # one event loop: its pools' (TestClient)

        def log_in(email: str) -> None:
            b.c.cookies.clear()
            assert b.login(email, "password-of-a-user").status_code == 303

        for email in users:
            log_in(email)
        for app in apps:
            app.state.calls.clear()
        for email in users:
            log_in(email)
            page = b.get("/reserve")
            assert page.status_code == 200 and 'data-total="60"' in page.text
        for app in apps:
            assert app.state.calls["GET /api/nodes"] <= 1, app.state.calls
            assert app.state.calls["GET /api/schedule"] == len(users), app.state.calls
            assert sum(app.state.calls.values()) <= 1 + len(users), app.state.calls
        booked = b.post("/reserve", {"node": "1/n-0", "duration": "1"}, page="/reserve")
        assert booked.status_code in (200, 409), booked.text[:300]
        assert apps[0].state.calls["POST /api/reservations"] == 1
        nodes_before = apps[0].state.calls["GET /api/nodes"]
        b.get("/reserve")
        assert apps[0].state.calls["GET /api/nodes"] == nodes_before + 1
        assert apps[1].state.calls["GET /api/nodes"] <= 1
