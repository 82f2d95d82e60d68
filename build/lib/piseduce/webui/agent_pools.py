"""One HTTP connection pool per agent.

A single httpx pool shared by every agent made each request pay for the pool's bookkeeping over
every connection of every agent: httpcore looks for a reusable connection by walking its whole
list, so a page that asks 50 agents at once spent most of its time there (issue 15: 67 % of
662 ms at 50 agents). A pool per agent keeps each walk to that agent's few connections.

Hosts that are not stored agents yet (Add Agent's probe) share one small pool of their own: an
admin probing many addresses must not leave a pool behind per address.

Every pool verifies TLS with one SSL context, built once: httpx builds a context per client
otherwise (the system's CA store loaded anew, 20 ms of CPU each), which is a second of a worker's
CPU for its first page at 50 agents, and again for each agent added.
"""

from __future__ import annotations

import asyncio
import ssl
from functools import cache

import httpx

# Per agent: enough for 8 concurrent pages asking nodes and calendar at once, several times over.
MAX_CONNECTIONS = 64
MAX_KEEPALIVE = 32


@cache
def ssl_context() -> ssl.SSLContext:
    """The one context every pool verifies with (read-only once built: safe to share)."""
    return httpx.create_ssl_context()


class AgentPools:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._pools: dict[str, httpx.AsyncClient] = {}
        self._probe = self._new(max_connections=16, keepalive=4)
        self._only: httpx.AsyncClient | None = None

    def _new(
        self, *, max_connections: int = MAX_CONNECTIONS, keepalive: int = MAX_KEEPALIVE
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=keepalive),
            follow_redirects=False,
            verify=ssl_context(),
        )

    def for_agent(self, agent_id: int, base_url: str) -> httpx.AsyncClient:
        """The pool of the stored agent at `base_url` (id 0: a host being probed)."""
        if self._only is not None:
            return self._only
        if agent_id <= 0:
            return self._probe
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = self._new()
        return pool

    def route_all(self, client: httpx.AsyncClient) -> None:
        """Send every agent's calls through `client`: the seam of tests that talk to an agent app
        in-process (an ASGI transport). The caller owns and closes that client."""
        self._only = client

    @property
    def count(self) -> int:
        return len(self._pools)

    async def close(self) -> None:
        pools = [*self._pools.values(), self._probe]
        self._pools.clear()
        await asyncio.gather(*(p.aclose() for p in pools), return_exceptions=True)
