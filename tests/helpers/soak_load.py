"""The soak's load: users booking through the agents' HTTP API with their own identities (a mix
of Pis and Grid'5000 nodes, some at once, some later), sending the deploy form, watching every
reservation until it is over, some given back early; and the faults: the agents' executors and
APIs killed -9 at random moments and restarted at once.

What the users saw is kept in `Ledger`: every reservation the API accepted, each status it was
seen in (in order), the reasons of its failures, and what a user could not make sense of (a 5xx,
a 404 for a reservation of theirs, a status that went backwards).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx

from helpers.soak_site import SoakSite, User
from piseduce.agent import lifecycle
from piseduce.agent.lifecycle import FINAL_STATUSES, Trigger

# The triggers the soak's users never send: without them a status never goes back.
_NOT_SENT = (Trigger.REBOOT, Trigger.REDEPLOY, Trigger.BOOTFILES, Trigger.REGISTER_ENV)


def forward_reach() -> dict[str, set[str]]:
    """Status -> the statuses reachable from it (lifecycle.TRANSITIONS, without _NOT_SENT)."""
    edges: dict[str, set[str]] = {s: set() for s in lifecycle.STATUSES}
    for (src, trig), dst in lifecycle.TRANSITIONS.items():
        if trig not in _NOT_SENT and dst != src:
            edges[src].add(dst)
    reach: dict[str, set[str]] = {}
    for s in lifecycle.STATUSES:
        seen, todo = set(), [s]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[s] = seen
    return reach


REACH = forward_reach()


@dataclass
class LoadOptions:
    reservations: int = 200  # accepted by the APIs (one per node) before the load stops
    seconds: float = 420.0  # the load phase's bound
    # Each reservation's slot, per agent: a Pi's deployment writes its card (seconds on a loaded
    # machine: 2 MB/s when the two cores are shared), a g5k node's is Kadeploy's (2 s at the
    # emulator's scale).
    pi_slot_s: tuple[float, float] = (70.0, 120.0)
    g5k_slot_s: tuple[float, float] = (25.0, 50.0)
    pi_share: float = 0.3
    two_nodes: float = 0.25  # bookings of two nodes at once
    later: float = 0.2  # bookings starting 5-20 s ahead
    unconfigured: float = 0.05  # never sent the deploy form (cancelled at the end of their slot)
    early_destroy: float = 0.15  # given back as soon as deployed
    executor_kills: int = 10
    api_kills: int = 5
    seed: int = 11


@dataclass
class Seen:
    agent: str
    rid: int
    owner: str
    statuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what the API said of a failure


@dataclass
class Ledger:
    seen: dict[tuple[str, int], Seen] = field(default_factory=dict)
    requests: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # booking refusals: status -> count
    refusal_without_reason: int = 0
    unknown_outcome: int = 0  # the connection broke after the booking was sent
    broken: Counter[str] = field(default_factory=Counter)  # connections broken mid-request, by kind
    server_errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    backwards: list[str] = field(default_factory=list)
    failed_without_reason: list[str] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)

    def accepted(self) -> int:
        return len(self.seen)

    def observe(self, s: Seen, body: dict[str, Any]) -> None:
        status = str(body.get("status"))
        prev = s.statuses[-1] if s.statuses else None
        if status != prev:
            if prev is not None and status not in REACH[prev]:
                self.backwards.append(f"{s.agent} #{s.rid}: {prev} -> {status}")
            s.statuses.append(status)
        if status == "failed":
            error = str(body.get("error") or "")
            if error and error not in s.errors:
                s.errors.append(error)
            if not error:
                self.failed_without_reason.append(f"{s.agent} #{s.rid}")


class Api:
    """Requests of one user to one agent that outlive the agent's restarts: a refused connection
    (the API is down) is tried again; a connection broken after the request went out is the
    caller's to judge (`ambiguous`)."""

    def __init__(self, site: SoakSite, agent: str, user: User, ledger: Ledger) -> None:
        self.agent, self.user, self.ledger = agent, user, ledger
        self.client = httpx.AsyncClient(base_url=site.agents[agent].url, headers=site.headers(agent, user),
                                        timeout=30)

    async def call(
        self, method: str, path: str, *, ambiguous_ok: bool = True, **kw: Any
    ) -> httpx.Response | None:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = await self.client.request(method, path, **kw)
            except httpx.ConnectError:
                pass
            except httpx.TransportError as exc:
                self.ledger.broken[f"{method} {type(exc).__name__}"] += 1
                if not ambiguous_ok:
                    return None
            else:
                if r.status_code < 500:
                    return r
                self.ledger.server_errors.append(
                    f"{self.agent} {method} {path}: {r.status_code} {r.text[:200]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.agent} {method} {path}: no answer for 90 s")
            await asyncio.sleep(0.3)

    async def aclose(self) -> None:
        await self.client.aclose()


class Load:
    def __init__(self, site: SoakSite, opts: LoadOptions, ledger: Ledger) -> None:
        self.site, self.opts, self.ledger = site, opts, ledger
        self.rng = random.Random(opts.seed)
        self.tasks: set[asyncio.Task[None]] = set()
        self.t0 = 0.0
        self.pending = 0  # reservations being booked (counted against the pace)
        self.apis: dict[tuple[str, str], Api] = {}

    # ------------------------------------------------------------ users

    async def run(self) -> None:
        """The load phase: bookings at the pace, and the kills. Watchers go on (see `finish`)."""
        self.t0 = time.monotonic()
        self.apis = {(a, u.email): Api(self.site, a, u, self.ledger) for a in self.site.agents
                     for u in self.site.users}
        users = [asyncio.create_task(self.user(u)) for u in self.site.users]
        chaos = asyncio.create_task(self.chaos())
        try:
            await asyncio.gather(*users, chaos)
        except BaseException:
            for t in (*users, chaos):
                t.cancel()
            raise

    async def finish(self, timeout: float) -> int:
        """Let the watchers see their reservations end (bounded); how many were still watched."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=max(0.0, timeout))
        left = len(self.tasks)
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for api in self.apis.values():
            await api.aclose()
        return left

    def _allowed(self) -> float:
        """The pace: reservations allowed by now (a little ahead, so the target is met in time)."""
        elapsed = time.monotonic() - self.t0
        return self.opts.reservations * min(1.0, 1.1 * elapsed / self.opts.seconds) + 2

    def _over(self) -> bool:
        done = self.ledger.accepted() + self.pending >= self.opts.reservations
        return done or time.monotonic() - self.t0 > self.opts.seconds

    async def user(self, user: User) -> None:
        apis = {a: self.apis[(a, user.email)] for a in self.site.agents}
        while not self._over():
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            if self.ledger.accepted() + self.pending >= self._allowed():
                continue
            agent = "rpi" if self.rng.random() < self.opts.pi_share else "g5k"
            count = 2 if self.rng.random() < self.opts.two_nodes else 1
            count = min(count, self.opts.reservations - self.ledger.accepted() - self.pending)
            if count <= 0:
                break
            self.pending += count
            try:
                ids = await self.book(apis[agent], count)
            finally:
                self.pending -= count
            if ids:
                self._spawn(self.reservation_life(apis[agent], ids))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def book(self, api: Api, count: int) -> list[int]:
        lo, hi = self.opts.pi_slot_s if api.agent == "rpi" else self.opts.g5k_slot_s
        start: str = "now"
        if self.rng.random() < self.opts.later:
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.rng.uniform(5, 20))
            start = later.isoformat()
        body = {"filters": [{"count": count}], "start": start,
                "duration_hours": self.rng.uniform(lo, hi) / 3600, "bin": "soak"}
        self.ledger.requests += 1
        r = await api.call("POST", "/api/reservations", json=body, ambiguous_ok=False)
        if r is None:
            self.ledger.unknown_outcome += 1
            return []
        if r.status_code != 201:
            key = str(r.status_code)
            self.ledger.refused[key] = self.ledger.refused.get(key, 0) + 1
            if not _detail(r):
                self.ledger.refusal_without_reason += 1
            return []
        ids = [int(x["id"]) for x in r.json()["reservations"]]
        for rid in ids:
            self.ledger.seen[(api.agent, rid)] = Seen(api.agent, rid, api.user.email, ["configuring"])
        return ids

    def _deploy_body(self, api: Api) -> dict[str, Any]:
        if api.agent == "rpi":
            return {"environment": self.site.env_name, "part_size": "whole", "ssh_keys": [api.user.ssh_pub],
                    "os_password": f"soak-{self.rng.randrange(10**6)}-pw"}
        return {"environment": "debian12-min", "ssh_keys": [api.user.ssh_pub]}

    async def reservation_life(self, api: Api, ids: list[int]) -> None:
        configure = self.rng.random() >= self.opts.unconfigured
        give_back = self.rng.random() < self.opts.early_destroy
        if configure:
            form = await api.call("GET", f"/api/reservations/{ids[0]}/form")
            if form is not None and form.status_code == 200:
                for rid in ids:
                    await self.deploy(api, rid)
        await asyncio.gather(*(self.watch(api, rid, give_back) for rid in ids))

    async def deploy(self, api: Api, rid: int) -> None:
        for _ in range(5):
            r = await api.call("POST", f"/api/reservations/{rid}/deploy", json=self._deploy_body(api))
            if r is None:
                continue
            if r.status_code == 202:
                return
            # Sent again after a broken connection: the first one was stored.
            current = await self.get(api, rid)
            if current is not None and current.get("status") != "configuring":
                return
            await asyncio.sleep(0.5)

    async def get(self, api: Api, rid: int) -> dict[str, Any] | None:
        r = await api.call("GET", f"/api/reservations/{rid}")
        seen = self.ledger.seen[(api.agent, rid)]
        if r is None:
            return None
        if r.status_code == 404:
            self.ledger.lost.append(f"{api.agent} #{rid}: 404 for its owner ({_detail(r)})")
            return None
        body = dict(r.json())
        self.ledger.observe(seen, body)
        return body

    async def watch(self, api: Api, rid: int, give_back: bool) -> None:
        """Until the reservation is over (the settle phase bounds the whole)."""
        destroyed = False
        while True:
            try:
                body = await self.get(api, rid)
            except TimeoutError:  # its API down for long: the end of the run says what is left
                continue
            if body is None:
                return
            if body["status"] in FINAL_STATUSES:
                return
            if give_back and not destroyed and body["status"] in ("deployed", "failed"):
                r = await api.call("POST", f"/api/reservations/{rid}/destroy")
                destroyed = r is not None and r.status_code in (202, 409)
            await asyncio.sleep(0.7)

    # ------------------------------------------------------------ faults

    async def chaos(self) -> None:
        """The kills at random moments of the load phase, each process restarted at once."""
        span = self.opts.seconds
        plan: list[tuple[float, str, str]] = []
        for _ in range(self.opts.executor_kills):
            plan.append((self.rng.uniform(0.05, 0.9) * span, self.rng.choice(["rpi", "g5k"]), "exec"))
        for _ in range(self.opts.api_kills):
            plan.append((self.rng.uniform(0.05, 0.9) * span, self.rng.choice(["rpi", "g5k"]), "api"))
        for at, agent, part in sorted(plan):
            delay = at - (time.monotonic() - self.t0)
            if delay > 0:
                await asyncio.sleep(delay)
            await asyncio.to_thread(self.site.kill_restart, agent, part)
            key = f"{part} kill -9"
            self.ledger.kills[key] = self.ledger.kills.get(key, 0) + 1
            if part == "api":
                await asyncio.to_thread(self.site.wait_healthy, self.site.agents[agent])


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail") or "")
    except ValueError:
        return ""
