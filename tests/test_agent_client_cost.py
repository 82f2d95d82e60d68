"""What talking to many agents costs the web UI, pinned: the costs issue 15 found and removed
must not come back unnoticed (a benchmark is never a timed test; these count instead)."""

from __future__ import annotations

import asyncio
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
from helpers.webui_fixtures import fake_agent_app, write_webui_config
from piseduce import crypto
from piseduce.config import load_webui_config
from piseduce.db import make_engine, session_factory
from piseduce.webui.agent_client import AgentClient
from piseduce.webui.agent_pools import AgentPools
from piseduce.webui.agents import AgentRef, Identity
from piseduce.webui.answer_memo import VARIANTS, AnswerMemo
from piseduce.webui.database import Database
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
