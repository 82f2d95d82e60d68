"""The typed agent client: one method per agent route the web UI uses, each answer read with the
protocol's models (`piseduce.protocol`). The agents' paths live here and only here.

It is the fan-out hub (`agents.AgentHub`: concurrency, deadlines, circuit breakers, the `who=`
identity headers) with types on top: a method returns a `Result` whose `value` is the validated
model, or None with the reason in words, so a page never reads a field an agent did not send or
sent malformed. A malformed answer is refused whole, in one sentence naming the agent, the route
and the field, rather than half-shown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from piseduce.protocol import (
    AcceptedOut,
    ActionOut,
    AdminNode,
    AgentInfo,
    BookingOut,
    CredentialsCheckOut,
    Deleted,
    EnvironmentOut,
    FormField,
    Health,
    MonitoringOut,
    NextSlotOut,
    Node,
    ReservationOut,
    ScanOut,
    Schedule,
)
from piseduce.protocol_events import EventFeed
from piseduce.protocol_rpi import DetectionOut, NetworkConfigOut, PortOut, SwitchOut
from piseduce.snmp_budget import answer_budget_s
from piseduce.webui import agent_answers
from piseduce.webui.agents import (
    SERVICE_IDENTITY,
    AgentHub,
    AgentRef,
    Identity,
    Reply,
    iso,
    transport_category,
)
from piseduce.webui.models import (
    AGENT_CONNECTED,
    AGENT_ERROR,
    AGENT_UNAUTHORIZED,
    AGENT_UNREACHABLE,
    ROLE_ADMIN,
    Agent,
    utcnow,
)
from piseduce.webui.node_lists import NodeLists

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_PROBLEMS = 3  # fields named in a malformed answer's sentence


@dataclass(frozen=True)
class Result(Generic[T]):
    """One agent's answer: `value` when it answered well, else None and `error` in words."""

    agent: AgentRef
    status: int  # the HTTP status; 0 when there was no HTTP answer
    value: T | None = None
    error: str = ""
    failure: str = ""  # agents.Reply.failure: transport, token, too_large, unexpected, http
    # Where a page may keep what it derives from `value` (answer_memo.Memo.derived: shared by
    # every page that gets the same answer, never changed once put); None: not remembered.
    derived: dict[Any, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def words(self) -> str:
        return f"{self.agent.name}: {self.error}"


@cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def malformed(route: str, exc: ValidationError) -> str:
    """What is wrong with an answer the protocol refuses: the route and the fields, bounded
    (`Result.words` puts the agent's name in front)."""
    problems = []
    for err in exc.errors(include_url=False)[:MAX_PROBLEMS]:
        where = ".".join(str(p) for p in err["loc"])[:80] or "the answer"
        problems.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')[:120]}")
    more = exc.error_count() - len(problems)
    return (
        f"answered something unexpected to {route} ({'; '.join(problems)}"
        + (f"; and {more} more" if more > 0 else "")
        + "); is it a PiSeduce agent of a compatible version?"
    )


def read(reply: Reply, model: Any, route: str) -> Result[Any]:
    """The reply as a Result of `model` (a protocol model or a list of one)."""
    if not reply.ok:
        return Result(reply.agent, reply.status, None, reply.error, reply.failure)
    try:
        value = _adapter(model).validate_python(reply.data)
    except ValidationError as exc:
        error = malformed(route, exc)
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        # What a validator may raise on data it cannot even walk (agent_answers bounds the
        # depth, but the model is the last line): the same words as any malformed answer.
        error = f"answered something unexpected to {route} ({type(exc).__name__}); is it a PiSeduce agent " \
            "of a compatible version?"
    else:
        return Result(reply.agent, reply.status, value)
    log.warning("agent %s %s", reply.agent.name, error)
    return Result(reply.agent, reply.status, None, error, "unexpected")


def _p(name: str) -> str:
    return quote(name, safe="")


@dataclass(frozen=True)
class Held:
    """A reservation of one agent, as the user's list shows it."""

    agent: AgentRef
    r: ReservationOut
    mine: bool


class AgentClient(AgentHub):
    """The hub, typed: every agent route the web UI calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node_lists = NodeLists()

    async def _ask(
        self,
        ref: AgentRef,
        method: str,
        path: str,
        model: Any,
        *,
        who: Identity | None,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        use_breaker: bool = True,
        token: bool = True,
        max_bytes: int | None = None,
    ) -> Result[Any]:
        if method != "GET":  # it may change the agent's nodes: this worker asks for them afresh
            self.node_lists.forget(ref.id)
        reply = await self.call(
            ref, method, path, who=who, json=json, params=params, timeout=timeout, use_breaker=use_breaker,
            token=token, max_bytes=max_bytes,
        )
        memo = reply.memo
        if memo is not None and model in memo.checked:
            return Result(reply.agent, reply.status, memo.checked[model], derived=memo.derived)
        if reply.size >= agent_answers.THREAD_FROM_BYTES:
            # A big answer (a site's schedule) is checked off the event loop, as it was decoded.
            result = await asyncio.to_thread(read, reply, model, f"{method} {path}")
        else:
            result = read(reply, model, f"{method} {path}")
        if memo is not None and result.value is not None:
            memo.checked[model] = result.value
            return replace(result, derived=memo.derived)
        return result

    # ------------------------------------------------------------ identity and health

    async def health(self, ref: AgentRef, *, token: bool = True) -> Result[Health]:
        """Its health check, past the breaker (is it alive, now?)."""
        return await self._ask(
            ref, "GET", "/api/health", Health, who=None, use_breaker=False, token=token, max_bytes=4096
        )

    async def info(self, ref: AgentRef) -> Result[AgentInfo]:
        # The health check and Add Agent act on nobody's behalf: the web UI names itself.
        return await self._ask(ref, "GET", "/api/info", AgentInfo, who=SERVICE_IDENTITY, use_breaker=False)

    async def probe(self, host: str, port: int, token: str) -> tuple[str, str, AgentInfo | None]:
        """(status, error in words, its info) of an agent, whether it is stored or not.

        The host is first asked `/api/health` *without* the token: only a host that answers like
        an agent is then sent the token (`/api/info`). The error says what kind of failure it
        was, never what the host answered: Add Agent must not become a way to read other
        services of the network."""
        base_url = Agent(host=host, port=port).base_url
        ref = AgentRef(0, f"{host}:{port}", host, port, base_url, token, "", "", "", "", False)
        health = await self.health(ref, token=False)
        if health.failure == "transport":
            return AGENT_UNREACHABLE, transport_category(health.error), None
        if not health.ok:
            return AGENT_ERROR, "is not a PiSeduce agent (its answer to /api/health is not an agent's)", None
        info = await self.info(ref)
        if info.value is not None:
            return AGENT_CONNECTED, "", info.value
        if info.failure == "transport":
            return AGENT_UNREACHABLE, transport_category(info.error), None
        if info.failure == "token":
            return AGENT_ERROR, info.error, None
        if info.status == 401:
            return AGENT_UNAUTHORIZED, "the agent refused the token (wrong token)", None
        if info.failure == "http" and info.status >= 500:
            return AGENT_ERROR, f"the agent failed (HTTP {info.status} to /api/info)", None
        return AGENT_ERROR, "is not a PiSeduce agent (its answer to /api/info is not an agent's)", None

    async def check_agent(self, agent_id: int) -> str:
        """Ask one stored agent again; its status, info and breaker follow the answer."""
        row = await self.database.read(lambda s: s.get(Agent, agent_id))
        if row is None:
            return ""
        ref = self.ref(row)
        status, error, info = await self.probe(ref.host, ref.port, ref.token)
        brk = self.breaker(agent_id)
        if status == AGENT_CONNECTED:
            brk.success()
        elif status == AGENT_UNREACHABLE:
            brk.failure(time.monotonic(), error.removeprefix("unreachable: "))

        def store(s: Session) -> None:
            agent = s.get(Agent, agent_id)
            if agent is None:
                return
            if agent.status != status:
                log.info("agent %s: %s -> %s %s", agent.name, agent.status, status, error)
            agent.status = status
            agent.last_error = error
            if info is not None:
                agent.last_seen = utcnow()
                agent.node_type = info.node_type
                agent.site = info.site[:128]
                agent.version = info.version
                agent.needs_credentials = info.credentials != "none"
                agent.info = info.model_dump(mode="json")

        await self.database.write(store)
        return status

    async def check_all(self) -> None:
        ids = await self.database.read(lambda s: list(s.scalars(select(Agent.id))))
        await asyncio.gather(*(self.check_agent(i) for i in ids), return_exceptions=True)

    # ------------------------------------------------------------ nodes and calendar

    async def nodes(self, ref: AgentRef, who: Identity) -> Result[list[Node]]:
        """Its nodes; those of an agent that acts with no account of the user's are the same for
        every user, and shared by this worker's pages for a few seconds (node_lists.py)."""

        async def ask() -> Result[list[Node]]:
            return await self._ask(ref, "GET", "/api/nodes", list[Node], who=who)

        if ref.about.credentials != "none":
            return await ask()
        key = (ref.id, who.role)
        kept: Result[list[Node]] = await self.node_lists.get(key, (ref.base_url, ref.token), ref, ask)
        return kept

    async def schedule(
        self, ref: AgentRef, who: Identity, start: dt.datetime, end: dt.datetime
    ) -> Result[Schedule]:
        params = {"start": iso(start), "end": iso(end)}
        return await self._ask(ref, "GET", "/api/schedule", Schedule, who=who, params=params)

    async def monitoring(self, ref: AgentRef, who: Identity, kind: str, period: str) -> Result[MonitoringOut]:
        params = {"kind": kind, "period": period}
        return await self._ask(ref, "GET", "/api/monitoring", MonitoringOut, who=who, params=params)

    # ------------------------------------------------------------ reservations

    async def reservations(
        self, ref: AgentRef, who: Identity, *, status: str = "", everyone: bool = False
    ) -> Result[list[ReservationOut]]:
        """The caller's reservations on one agent (every user's with `everyone`, admins only)."""
        params = {"status": status} if status else {}
        if everyone:
            params["all"] = "true"
        return await self._ask(ref, "GET", "/api/reservations", list[ReservationOut], who=who, params=params)

    async def held(
        self, who: Identity, *, status: str, refs: Iterable[AgentRef] | None = None, everyone: bool = False
    ) -> tuple[list[Held], list[str]]:
        """The caller's reservations of every agent (`status`: one of the lifecycle's, or
        "active"), and each failed agent in words. With `everyone` (admins only), every user's.
        Defence in depth: whatever an agent answers, a user gets only their own."""
        everyone = everyone and who.role == ROLE_ADMIN
        lists = await self.fan_out(
            list(await self.refs() if refs is None else refs),
            lambda ref: self.reservations(ref, who, status=status, everyone=everyone),
        )
        out: list[Held] = []
        errors: list[str] = []
        for answer in lists:
            if answer.value is None:
                errors.append(answer.words)
                continue
            for r in answer.value:
                wanted = status in ("", "active") or r.status == status
                if wanted and (everyone or r.owner == who.email):
                    out.append(Held(answer.agent, r, mine=r.owner == who.email))
        return out, errors

    async def reservation(self, ref: AgentRef, who: Identity, rid: int) -> Result[ReservationOut]:
        return await self._ask(ref, "GET", f"/api/reservations/{rid}", ReservationOut, who=who)

    async def book(self, ref: AgentRef, who: Identity, body: Mapping[str, Any]) -> Result[BookingOut]:
        """POST /api/reservations (the agent's ReservationRequest: filters, start, duration, bin)."""
        return await self._ask(ref, "POST", "/api/reservations", BookingOut, who=who, json=dict(body))

    async def next_slot(self, ref: AgentRef, who: Identity, body: Mapping[str, Any]) -> Result[NextSlotOut]:
        """POST /api/next-slot (filters, after, duration_hours): a read, nothing booked."""
        return await self._ask(ref, "POST", "/api/next-slot", NextSlotOut, who=who, json=dict(body))

    async def form(self, ref: AgentRef, who: Identity, rid: int) -> Result[list[FormField]]:
        return await self._ask(ref, "GET", f"/api/reservations/{rid}/form", list[FormField], who=who)

    async def deploy(
        self, ref: AgentRef, who: Identity, rid: int, params: Mapping[str, Any]
    ) -> Result[AcceptedOut]:
        path = f"/api/reservations/{rid}/deploy"
        return await self._ask(ref, "POST", path, AcceptedOut, who=who, json=dict(params))

    async def act(self, ref: AgentRef, who: Identity, rid: int, action: str) -> Result[AcceptedOut]:
        """destroy, reboot, redeploy or bootfiles (202 with what was queued, or 409 with why)."""
        if action not in ("destroy", "reboot", "redeploy", "bootfiles"):
            raise ValueError(f"not an action: {action}")
        return await self._ask(ref, "POST", f"/api/reservations/{rid}/{action}", AcceptedOut, who=who)

    async def extend(self, ref: AgentRef, who: Identity, rid: int, hours: float) -> Result[ReservationOut]:
        """Move the end later by `hours` (0: by the reservation's own length)."""
        path = f"/api/reservations/{rid}/extend"
        return await self._ask(ref, "POST", path, ReservationOut, who=who, json={"hours": hours})

    async def register_env(self, ref: AgentRef, who: Identity, rid: int, name: str) -> Result[AcceptedOut]:
        path = f"/api/reservations/{rid}/register_env"
        return await self._ask(ref, "POST", path, AcceptedOut, who=who, json={"name": name})

    async def check_credentials(
        self, ref: AgentRef, who: Identity, timeout: float
    ) -> Result[CredentialsCheckOut]:
        path = "/api/credentials/check"
        return await self._ask(ref, "POST", path, CredentialsCheckOut, who=who, timeout=timeout)

    # ------------------------------------------------------------ admin: nodes

    async def admin_nodes(self, ref: AgentRef, who: Identity) -> Result[list[AdminNode]]:
        return await self._ask(ref, "GET", "/api/admin/nodes", list[AdminNode], who=who)

    async def add_node(self, ref: AgentRef, who: Identity, body: Mapping[str, Any]) -> Result[AdminNode]:
        return await self._ask(ref, "POST", "/api/admin/nodes", AdminNode, who=who, json=dict(body))

    async def node_status(self, ref: AgentRef, who: Identity, name: str, status: str) -> Result[AdminNode]:
        path = f"/api/admin/nodes/{_p(name)}/status"
        return await self._ask(ref, "POST", path, AdminNode, who=who, json={"status": status})

    async def delete(self, ref: AgentRef, who: Identity, collection: str, name: str) -> Result[Deleted]:
        """DELETE a node, switch or environment (`collection`: nodes, switches, environments)."""
        if collection not in ("nodes", "switches", "environments"):
            raise ValueError(f"not an admin collection: {collection}")
        return await self._ask(ref, "DELETE", f"/api/admin/{collection}/{_p(name)}", Deleted, who=who)

    async def actions(self, ref: AgentRef, who: Identity) -> Result[list[ActionOut]]:
        return await self._ask(ref, "GET", "/api/admin/actions", list[ActionOut], who=who)

    # ------------------------------------------------------------ admin: switches (Feature.POWER)

    async def detect(self, ref: AgentRef, who: Identity, body: Mapping[str, Any]) -> Result[DetectionOut]:
        """Start a node detection (raspberry agents): the job, its ports waiting."""
        return await self._ask(ref, "POST", "/api/admin/detect", DetectionOut, who=who, json=dict(body))

    async def detections(self, ref: AgentRef, who: Identity) -> Result[list[DetectionOut]]:
        return await self._ask(ref, "GET", "/api/admin/detect", list[DetectionOut], who=who)

    async def detection(self, ref: AgentRef, who: Identity, job_id: str) -> Result[DetectionOut]:
        return await self._ask(ref, "GET", f"/api/admin/detect/{_p(job_id)}", DetectionOut, who=who)

    async def switches(self, ref: AgentRef, who: Identity) -> Result[list[SwitchOut]]:
        return await self._ask(ref, "GET", "/api/admin/switches", list[SwitchOut], who=who)

    async def save_switch(
        self, ref: AgentRef, who: Identity, body: Mapping[str, Any], editing: str | None = None
    ) -> Result[SwitchOut]:
        """Add a switch, or change `editing`."""
        if editing is None:
            return await self._ask(ref, "POST", "/api/admin/switches", SwitchOut, who=who, json=dict(body))
        path = f"/api/admin/switches/{_p(editing)}"
        return await self._ask(ref, "PUT", path, SwitchOut, who=who, json=dict(body))

    @property
    def snmp_deadline(self) -> float:
        """A call that waits for a switch: the agent's SNMP retries fit in it (snmp_budget), where
        the deadline of ordinary calls would give up while the switch is still answering."""
        return max(self.timeout, answer_budget_s())

    async def switch_ports(self, ref: AgentRef, who: Identity, name: str) -> Result[list[PortOut]]:
        return await self._ask(ref, "GET", f"/api/admin/switches/{_p(name)}/ports", list[PortOut], who=who,
                               timeout=self.snmp_deadline)

    async def network_config(self, ref: AgentRef, who: Identity) -> Result[NetworkConfigOut]:
        """The dnsmasq file and NFS export of a raspberry agent's boards' network."""
        return await self._ask(ref, "GET", "/api/admin/network-config", NetworkConfigOut, who=who)

    async def power(self, ref: AgentRef, who: Identity, name: str, port: int, on: bool) -> Result[PortOut]:
        path = f"/api/admin/switches/{_p(name)}/ports/{int(port)}/{'on' if on else 'off'}"
        return await self._ask(ref, "POST", path, PortOut, who=who, timeout=self.snmp_deadline)

    # ------------------------------------------------------------ admin: environments

    async def environments(self, ref: AgentRef, who: Identity) -> Result[list[EnvironmentOut]]:
        return await self._ask(ref, "GET", "/api/admin/environments", list[EnvironmentOut], who=who)

    async def environment(self, ref: AgentRef, who: Identity, name: str) -> Result[EnvironmentOut]:
        return await self._ask(ref, "GET", f"/api/admin/environments/{_p(name)}", EnvironmentOut, who=who)

    async def save_environment(
        self, ref: AgentRef, who: Identity, body: Mapping[str, Any], editing: str = ""
    ) -> Result[EnvironmentOut]:
        """Add an environment, or update `editing`."""
        if not editing:
            path, method = "/api/admin/environments", "POST"
        else:
            path, method = f"/api/admin/environments/{_p(editing)}", "PUT"
        return await self._ask(ref, method, path, EnvironmentOut, who=who, json=dict(body))

    async def default_environment(
        self, ref: AgentRef, who: Identity, name: str, on: bool
    ) -> Result[EnvironmentOut]:
        path = f"/api/admin/environments/{_p(name)}/default"
        return await self._ask(ref, "POST" if on else "DELETE", path, EnvironmentOut, who=who)

    async def scan_environments(self, ref: AgentRef, who: Identity) -> Result[ScanOut]:
        return await self._ask(ref, "POST", "/api/admin/environments/scan", ScanOut, who=who)

    # ------------------------------------------------------------ notifications

    async def events(self, ref: AgentRef, who: Identity, after: int, limit: int) -> Result[EventFeed]:
        """The agent's event log after `after` (admins only; webui/notify/feed.py)."""
        params = {"after": str(after), "limit": str(limit)}
        return await self._ask(ref, "GET", "/api/admin/events", EventFeed, who=who, params=params)


def agents(request: Request) -> AgentClient:
    """The web UI's agent client (a route dependency)."""
    client = request.app.state.hub
    if not isinstance(client, AgentClient):
        raise TypeError("the web UI's hub is not an AgentClient")
    return client

