"""An agent's node list, asked once for the users of a worker within a few seconds.

The Reserve page asks every agent for its nodes and its calendar; at 50 agents that is 100 calls a
page, and each call costs the web UI most of a millisecond of CPU (httpx), which 8 users on 2
workers cannot afford. The calendar is the caller's (it marks their own slots), but the node list of
an agent that acts with no testbed account of the user's (`credentials` "none") is the same for
everyone (of a role: admins and users are kept apart, should an agent ever answer them apart): it
is kept TTL seconds, and the pages of that time share it; calls at the same moment share one call
in flight.

Per worker: another worker may show a node list up to TTL seconds older than this one's. A change
this worker sends to an agent (any call that is not a GET) forgets that agent's list at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

TTL = 3.0

Fetch = Callable[[], Awaitable[Any]]
Key = tuple[int, str]  # the agent's id, the caller's role


class NodeLists:
    def __init__(self, ttl: float | None = None) -> None:
        self._ttl = TTL if ttl is None else ttl
        # (agent id, role) -> (its address and token, until when, the answer or the call in flight)
        self._kept: dict[Key, tuple[tuple[str, str], float, asyncio.Future[Any]]] = {}

    async def get(self, key: Key, where: tuple[str, str], ref: Any, fetch: Fetch) -> Any:
        """The agent's answer (a Result) kept or in flight, else `fetch()`'s, kept if it is a
        success. `where` (its address and token) must match: an edited agent is asked afresh."""
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] == where and now < kept[1]:
            task = kept[2]
        else:
            # A task of its own: a page that gives up (its browser left) does not cancel the others'.
            task = asyncio.ensure_future(fetch())
            self._kept[key] = (where, now + self._ttl, task)
            task.add_done_callback(lambda t: self._settled(key, t))
        return replace(await asyncio.shield(task), agent=ref)  # with the caller's snapshot of the agent

    def _settled(self, key: Key, task: asyncio.Future[Any]) -> None:
        kept = self._kept.get(key)
        if kept is None or kept[2] is not task:
            return
        failed = task.cancelled() or task.exception() is not None or not task.result().ok
        if failed:  # a failure is not kept: the next page asks again
            del self._kept[key]
        else:  # kept TTL seconds from its answer, not from its question
            self._kept[key] = (kept[0], time.monotonic() + self._ttl, task)

    def forget(self, agent_id: int) -> None:
        """Every role's list of the agent."""
        for key in [k for k in self._kept if k[0] == agent_id]:
            del self._kept[key]
