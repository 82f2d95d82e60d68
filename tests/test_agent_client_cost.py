"""What talking to many agents costs the web UI, pinned: the costs issue 15 found and removed
must not come back unnoticed (a benchmark is never a timed test; these count instead)."""

from __future__ import annotations

import asyncio
import importlib.machinery
from typing import Any

import httpcore._synchronization as httpcore_sync
import pytest

from piseduce.webui.agent_pools import AgentPools


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
